//! The heap one `VerifiedCache` entry holds, measured with a counting allocator.
//!
//! The counts are per thread: the tests of this binary run in parallel, and each
//! measures only what its own thread allocates. The cache keeps a token's SHA-256,
//! never the token, so an entry is the claims plus the cache's own bookkeeping; the
//! test reports and bounds that bookkeeping.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use tower_bearer::server::{from_fn, Claims, Validator, VerifiedCache};

struct Counting;

thread_local! {
    /// Bytes allocated and not freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    // try_with: the thread may be tearing its locals down.
    let _ = LIVE.try_with(|c| c.set(c.get() + n));
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The claims of a typical access token, as `JwtValidator` would read them.
fn typical_claims() -> Claims {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    serde_json::from_value(serde_json::json!({
        "iss": "https://idp.example.com/realms/main",
        "sub": "8f14e45f-ceea-467a-9575-2c3a2e1a9d41",
        "aud": "orders-api",
        "exp": exp,
        "iat": exp - 3600,
        "jti": "b6f0a1c2-7d3e-4f5a-8b9c-0d1e2f3a4b5c",
        "scope": "orders:read orders:write",
        "client_id": "web-frontend",
    }))
    .unwrap()
}

/// Heap bytes of one `Claims` value beyond its inline size: its strings and map.
fn claims_heap(claims: &Claims) -> isize {
    let before = live();
    let copy = claims.clone();
    let heap = live() - before;
    drop(copy);
    heap
}

/// Fills a cache of `max_entries` with `n` distinct tokens; the bytes per entry, all
/// included (the claims too).
fn bytes_per_entry(max_entries: usize, n: usize, claims: &Claims) -> f64 {
    let template = claims.clone();
    let cache =
        VerifiedCache::new(from_fn(move |_: &str| Ok(template.clone()))).max_entries(max_entries);
    let tokens: Vec<String> = (0..n).map(|i| format!("token-{i:08}")).collect();
    let before = live();
    for token in &tokens {
        let outcome = cache.validate(token).now_or_pending().ok().unwrap();
        assert!(outcome.is_ok());
    }
    let held = live() - before;
    assert_eq!(cache.len(), n);
    // A hit allocates nothing to stay.
    let before_hits = live();
    for token in tokens.iter().take(100) {
        drop(cache.validate(token).now_or_pending().ok().unwrap());
    }
    assert_eq!(live(), before_hits, "a hit keeps nothing");
    held as f64 / n as f64
}

#[test]
fn one_verified_cache_entry_holds_under_a_kilobyte_beyond_its_claims() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let claims = typical_claims();
    // The claims themselves: their inline size (in the entry's Arc) and their heap.
    let claims_bytes = (std::mem::size_of::<Claims>() as isize + claims_heap(&claims)) as f64;
    eprintln!(
        "claims: {claims_bytes} B ({} inline + {} heap)",
        std::mem::size_of::<Claims>(),
        claims_heap(&claims)
    );
    // quick_cache splits the cache into shards by the machine's parallelism, each
    // with its share of `max_entries`: a cache filled to its bound evicts in the
    // fuller shards first, so each is filled to half. The spare capacity varies with
    // the fill, so several sizes are measured.
    for (max_entries, n) in [(2_000, 1_000), (10_000, 5_000), (20_000, 10_000)] {
        let per_entry = bytes_per_entry(max_entries, n, &claims);
        let overhead = per_entry - claims_bytes;
        eprintln!(
            "max_entries {max_entries}, {n} entries: {per_entry:.0} B per entry, \
             {overhead:.0} B beyond the claims"
        );
        assert!(
            overhead < 1024.0,
            "{overhead:.0} B per entry beyond the claims ({n} entries)"
        );
    }
}
