//! `GET /events`: the page's server-sent event stream. On connect the current snapshot, then
//! each new one (a slow reader skips to the newest: snapshots come from a `watch` channel, so
//! nothing queues up for it), and a comment every 15 s so the browser and any proxy keep the
//! connection. At most [`MAX_STREAMS`] are open at once; a reader that stops reading is dropped
//! by the server after [`STALL`] (see [`Stall`]).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use hyper::body::Frame;
use tokio::sync::{watch, OwnedSemaphorePermit};

/// How many event streams may be open at once.
pub const MAX_STREAMS: usize = 16;
/// The keep-alive comment's period.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a frame may wait for a reader that does not read before the connection is dropped.
pub const STALL: Duration = Duration::from_secs(30);
/// How long the browser waits before reconnecting (the `retry:` field).
const RETRY_MS: u32 = 2000;

/// Whether the stream's last frame is still waiting to be taken by the connection (its
/// buffers are full: the reader stopped reading).
#[derive(Debug, Clone, Default)]
pub struct Stall(Arc<Mutex<Option<Instant>>>);

impl Stall {
    fn set(&self, v: Option<Instant>) {
        if let Ok(mut g) = self.0.lock() {
            *g = v;
        }
    }

    /// Whether a frame has waited longer than `limit`.
    pub fn stuck(&self, limit: Duration) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|t| t.elapsed() > limit)
    }
}

/// Counts an open stream while it lives.
struct Open {
    count: Arc<AtomicUsize>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

struct State {
    rx: watch::Receiver<Arc<str>>,
    first: bool,
    stall: Stall,
    _open: Open,
}

/// One SSE message carrying a snapshot (its JSON has no newline: one `data:` line).
pub fn message(json: &str) -> String {
    format!("event: snapshot\ndata: {json}\n\n")
}

/// The event stream of one reader, holding `permit` (one of [`MAX_STREAMS`]) while it lives,
/// with a comment after each `heartbeat` of quiet ([`HEARTBEAT`]).
pub fn stream(
    rx: watch::Receiver<Arc<str>>,
    open: Arc<AtomicUsize>,
    permit: OwnedSemaphorePermit,
    stall: Stall,
    heartbeat: Duration,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    open.fetch_add(1, Ordering::Relaxed);
    let state = State {
        rx,
        first: true,
        stall,
        _open: Open {
            count: open,
            _permit: permit,
        },
    };
    futures::stream::unfold(state, move |mut st| async move {
        // Asked for the next frame: the last one was taken.
        st.stall.set(None);
        let text = if st.first {
            st.first = false;
            let json = st.rx.borrow_and_update().clone();
            format!("retry: {RETRY_MS}\n{}", message(&json))
        } else {
            tokio::select! {
                r = st.rx.changed() => match r {
                    Ok(()) => {
                        let json = st.rx.borrow_and_update().clone();
                        message(&json)
                    }
                    // The daemon is stopping: end the stream (the browser retries).
                    Err(_) => return None,
                },
                () = tokio::time::sleep(heartbeat) => ": ping\n\n".to_string(),
            }
        };
        st.stall.set(Some(Instant::now()));
        Some((Ok(Frame::data(Bytes::from(text))), st))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::sync::Semaphore;

    async fn next_text(
        s: &mut (impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin),
    ) -> String {
        let frame = s.next().await.unwrap().unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_reader_gets_the_snapshot_then_only_the_newest_and_is_counted() {
        let (tx, rx) = watch::channel(Arc::<str>::from("{\"seq\":1}"));
        let open = Arc::new(AtomicUsize::new(0));
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().unwrap();
        let mut s = Box::pin(stream(
            rx,
            open.clone(),
            permit,
            Stall::default(),
            HEARTBEAT,
        ));
        let first = next_text(&mut s).await;
        assert!(
            first.starts_with("retry: 2000\nevent: snapshot\ndata: {\"seq\":1}\n\n"),
            "{first}"
        );
        assert_eq!(open.load(Ordering::Relaxed), 1);
        assert!(
            sem.clone().try_acquire_owned().is_err(),
            "the one slot is taken"
        );
        // A reader that was not reading skips to the newest snapshot.
        tx.send_replace(Arc::from("{\"seq\":2}"));
        tx.send_replace(Arc::from("{\"seq\":3}"));
        assert_eq!(
            next_text(&mut s).await,
            "event: snapshot\ndata: {\"seq\":3}\n\n"
        );
        drop(tx);
        assert!(s.next().await.is_none(), "ends when the hub is gone");
        drop(s);
        assert_eq!(open.load(Ordering::Relaxed), 0);
        assert!(sem.try_acquire_owned().is_ok(), "the slot is free again");
    }

    #[tokio::test]
    async fn an_idle_stream_sends_a_heartbeat_comment() {
        let (_tx, rx) = watch::channel(Arc::<str>::from("{}"));
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.try_acquire_owned().unwrap();
        let mut s = Box::pin(stream(
            rx,
            Arc::default(),
            permit,
            Stall::default(),
            Duration::from_millis(20),
        ));
        next_text(&mut s).await;
        assert_eq!(next_text(&mut s).await, ": ping\n\n");
    }

    #[test]
    fn a_frame_not_taken_for_long_is_a_stall() {
        let st = Stall::default();
        assert!(!st.stuck(Duration::ZERO));
        st.set(Some(Instant::now() - Duration::from_secs(60)));
        assert!(st.stuck(STALL));
        st.set(None);
        assert!(!st.stuck(Duration::ZERO));
    }
}
