//! The heap one `Refreshing` authorizer holds, measured with a counting allocator.
//!
//! The counts are per thread: the tests of this binary run in parallel, and each
//! measures only what its own thread allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use tower_bearer::client::{Authorizer, Refreshing};
use tower_bearer::Token;

struct Counting;

thread_local! {
    /// Bytes allocated and not freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Allocations made by this thread.
    static ALLOCATIONS: Cell<isize> = const { Cell::new(0) };
}

fn add(counter: &'static std::thread::LocalKey<Cell<isize>>, n: isize) {
    // try_with: the thread may be tearing its locals down.
    let _ = counter.try_with(|c| c.set(c.get() + n));
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

fn allocations() -> isize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(&LIVE, layout.size() as isize);
        add(&ALLOCATIONS, 1);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(&LIVE, -(layout.size() as isize));
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
        let before = live();
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
        let held = live() - before;
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
    let before = allocations();
    for _ in 0..1_000 {
        let credential = cache
            .credential()
            .now_or_pending()
            .expect("ready")
            .unwrap()
            .unwrap();
        assert_eq!(credential.value, first.value);
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 1,000 fast-path calls"
    );
}
