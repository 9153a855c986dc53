//! Where log lines go: stderr, through a buffer that a thread of its own
//! writes out every [`FLUSH_EVERY`]. A relay logs several lines per message;
//! writing each at once costs a system call on the session's thread, and
//! handing each to a writer thread (a channel) costs a wake-up per line —
//! measured at about four context switches per message. Buffered, a session
//! only copies its line; the writer wakes ten times a second.
//!
//! Bounded: past [`MAX_BUFFER`] bytes the session writing a line writes the
//! buffer out itself, so a stalled stderr slows logging down rather than
//! filling memory. Lines are never dropped; [`Flusher`] writes what is left
//! when it is dropped at exit. A crash (`SIGKILL`) loses at most the last
//! [`FLUSH_EVERY`] of lines.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the buffer is written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes held at most before a writer writes them out itself.
pub const MAX_BUFFER: usize = 1 << 20;

#[derive(Default)]
struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Set at exit: the writer writes the rest and ends.
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Writes the buffer to stderr; one per process.
fn write_out(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes);
    let _ = err.flush();
}

/// The writer `tracing_subscriber` is given ([`tracing_subscriber::fmt::MakeWriter`]).
#[derive(Clone)]
pub struct BufferedStderr(Arc<Shared>);

/// Writes the last lines out when dropped (keep it alive in `main`).
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A buffered stderr and the thread that writes it out.
pub fn buffered_stderr() -> (BufferedStderr, Flusher) {
    let shared = Arc::new(Shared::default());
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            loop {
                let mut stop = worker.stop.lock().unwrap_or_else(|e| e.into_inner());
                if !*stop {
                    stop = worker
                        .wake
                        .wait_timeout(stop, FLUSH_EVERY)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                let done = *stop;
                drop(stop);
                flush(&worker);
                if done {
                    return;
                }
            }
        })
        .ok();
    (BufferedStderr(shared.clone()), Flusher { shared, thread })
}

fn flush(shared: &Shared) {
    let bytes = std::mem::take(&mut *shared.buffer.lock().unwrap_or_else(|e| e.into_inner()));
    if !bytes.is_empty() {
        write_out(&bytes);
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_one();
        match self.thread.take() {
            Some(t) => {
                let _ = t.join();
            }
            None => flush(&self.shared),
        }
    }
}

impl Write for BufferedStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.0.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buffer.extend_from_slice(bytes);
        if buffer.len() > MAX_BUFFER {
            // No writer thread keeping up (or none at all): write it here.
            write_out(&std::mem::take(&mut *buffer));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = BufferedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
