//! EnvSource and ApiKey read the real process environment. One test in its own
//! binary: nothing else in this process reads or writes the environment meanwhile.

use secrecy::ExposeSecret;
use tower_bearer::client::source::{EnvSource, EnvVar};
use tower_bearer::client::{ApiKey, TokenSource};
use tower_bearer::Error;

#[tokio::test(flavor = "current_thread")]
async fn the_process_environment_is_read_with_aliases() {
    let id = std::process::id();
    let new = format!("TB_TEST_{id}");
    let old = format!("TB_OLD_{id}");
    let env = EnvSource::new(&new).deprecated_prefix(&old);
    let err = env.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::NoToken(_)), "{err:?}");

    std::env::set_var(format!("{old}_ACCESS_TOKEN"), "old-token");
    let t = env.fetch(None).await.unwrap();
    assert_eq!(t.access_token().expose_secret(), "old-token");

    std::env::set_var(format!("{new}_ACCESS_TOKEN"), "new-token");
    let t = env.fetch(None).await.unwrap();
    assert_eq!(t.access_token().expose_secret(), "new-token");

    let var = EnvVar::new(format!("{new}_API_KEY"));
    assert!(matches!(
        ApiKey::from_env("x-api-key", &var),
        Err(Error::NoToken(_))
    ));
    std::env::set_var(var.canonical(), "k-1");
    assert!(ApiKey::from_env("x-api-key", &var).is_ok());
}
