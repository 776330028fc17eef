//! The incoming side: validate `Authorization: Bearer` and answer as RFC 6750 says.
