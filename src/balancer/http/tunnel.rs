//! An upgraded connection (WebSocket, say), once both sides switched: bytes copied both
//! ways until either side closes, the balancer shuts down, or nothing has gone either way
//! for the idle time — `balancer.timeout_s`, as nginx's `proxy_read_timeout` and HAProxy's
//! `timeout tunnel` bound a silent tunnel. Without that bound, a tunnel whose ends went
//! away without a word would hold its client connection slot for ever.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// One side closed (or failed); the bytes copied each way.
    Closed(std::io::Result<(u64, u64)>),
    /// Nothing went either way for the idle time.
    Idle,
    /// The balancer is shutting down.
    Shutdown,
}

/// Copies between `client` and `member` until one closes, `idle` passes without a byte
/// either way, or `stop` is cancelled.
pub async fn copy<C, M>(client: C, member: M, idle: Duration, stop: &CancellationToken) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    M: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut client = Active::new(client, start, &last);
    let mut member = Active::new(member, start, &last);
    let copying = tokio::io::copy_bidirectional(&mut client, &mut member);
    tokio::pin!(copying);
    let check = tokio::time::sleep(idle);
    tokio::pin!(check);
    loop {
        tokio::select! {
            copied = &mut copying => return Ended::Closed(copied),
            _ = stop.cancelled() => return Ended::Shutdown,
            _ = &mut check => {
                let active = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if Instant::now() >= active + idle {
                    return Ended::Idle;
                }
                check.as_mut().reset(active + idle);
            }
        }
    }
}

/// One side of a tunnel, noting (in milliseconds since the tunnel started) when bytes
/// last moved through it.
struct Active<'a, S> {
    inner: S,
    start: Instant,
    last: &'a AtomicU64,
}

impl<'a, S> Active<'a, S> {
    fn new(inner: S, start: Instant, last: &'a AtomicU64) -> Active<'a, S> {
        Active { inner, start, last }
    }

    fn moved(&self) {
        let since = self.start.elapsed().as_millis();
        self.last
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.moved();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
        if written > 0 {
            self.moved();
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const IDLE: Duration = Duration::from_secs(60);

    /// A tunnel between two in-memory pipes; the test holds their other ends.
    fn tunnel(
        stop: &CancellationToken,
    ) -> (
        tokio::task::JoinHandle<Ended>,
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
    ) {
        let (client, client_end) = duplex(1024);
        let (member, member_end) = duplex(1024);
        let stop = stop.clone();
        let task = tokio::spawn(async move { copy(client_end, member_end, IDLE, &stop).await });
        (task, client, member)
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_go_both_ways_and_a_close_ends_it() {
        let stop = CancellationToken::new();
        let (task, mut client, mut member) = tunnel(&stop);
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        member.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        member.write_all(b"pong!").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong!");
        drop(client);
        drop(member);
        assert!(matches!(task.await.unwrap(), Ended::Closed(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_after_the_idle_time_and_traffic_pushes_it_on() {
        let stop = CancellationToken::new();
        let (task, mut client, mut member) = tunnel(&stop);
        let started = Instant::now();
        // Traffic just before the idle time runs out, one way then the other, keeps it.
        tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
        client.write_all(b"a").await.unwrap();
        let mut got = [0u8; 1];
        member.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
        member.write_all(b"b").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert!(!task.is_finished());
        // Then silence: it ends one idle time after the last byte, not before.
        let ended = tokio::time::timeout(IDLE * 10, task).await;
        assert!(matches!(ended, Ok(Ok(Ended::Idle))), "{ended:?}");
        let lasted = started.elapsed();
        let last_byte = (IDLE - Duration::from_secs(1)) * 2;
        assert!(
            lasted >= last_byte + IDLE && lasted < last_byte + IDLE + Duration::from_secs(1),
            "ended after {lasted:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_it() {
        let stop = CancellationToken::new();
        let (task, _client, _member) = tunnel(&stop);
        stop.cancel();
        assert!(matches!(task.await.unwrap(), Ended::Shutdown));
    }
}
