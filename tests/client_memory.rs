//! The heap one `Refreshing` authorizer holds, measured with a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tower_bearer::client::{Authorizer, Refreshing};
use tower_bearer::Token;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn one_refreshing_authorizer_holds_under_a_kilobyte_beyond_its_token() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let access = "x".repeat(900); // a typical JWT size
    let measure = |with_token: bool| {
        let before = LIVE.load(Ordering::SeqCst);
        let mut builder = Refreshing::builder(tower_bearer::client::source::from_fn(|_| async {
            Token::bearer("unused")
        }));
        if with_token {
            let token = Token::bearer(access.as_str())
                .unwrap()
                .with_refresh_token("r".repeat(64))
                .with_expires_in(Duration::from_secs(3600));
            builder = builder.initial_token(token);
        }
        let cache = builder.build();
        if with_token {
            // Served from the cache: nothing more is allocated to stay.
            let _ = cache.credential().now_or_pending();
        }
        let held = LIVE.load(Ordering::SeqCst) - before;
        (cache, held)
    };
    // arc-swap sets up a thread-local debt list on the first load of the thread: a
    // cost per thread, not per cache.
    let _warm = measure(true);
    let (_empty, empty) = measure(false);
    let (_full, full) = measure(true);
    // The token's own bytes: access token, the precomputed "Bearer " header, refresh token.
    let token_bytes = (900 + 7 + 900 + 64) as isize;
    eprintln!("empty cache: {empty} B; with a token: {full} B; token bytes: {token_bytes} B");
    assert!(empty < 1024, "an empty cache holds {empty} B");
    assert!(
        full - token_bytes < 1024,
        "overhead beyond the token: {} B",
        full - token_bytes
    );
}

#[test]
fn the_fast_path_allocates_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let token = Token::bearer("t".repeat(500))
        .unwrap()
        .with_expires_in(Duration::from_secs(3600));
    let cache = Refreshing::builder(tower_bearer::client::source::from_fn(|_| async {
        Token::bearer("unused")
    }))
    .initial_token(token)
    .build();
    // The first clone of a header value shares its buffer once; later ones only count.
    let first = cache
        .credential()
        .now_or_pending()
        .unwrap()
        .unwrap()
        .unwrap();
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..1_000 {
        let credential = cache
            .credential()
            .now_or_pending()
            .expect("ready")
            .unwrap()
            .unwrap();
        assert_eq!(credential.value, first.value);
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 1,000 fast-path calls"
    );
}
