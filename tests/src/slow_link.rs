//! A TCP relay that delays every byte by a set time in each direction:
//! a server (Redis, PostgreSQL) that is a network hop away instead of on
//! loopback. Only latency is added: bytes keep their order and the relay
//! never holds a writer back, so a pipelined client keeps its throughput,
//! as it would over a real link.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The relay; it stops accepting when dropped (open connections end with
/// the test's runtime).
pub struct SlowLink {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    /// The one-way delay in microseconds, read as each chunk arrives.
    one_way_us: Arc<AtomicU64>,
}

impl SlowLink {
    /// Relays connections made to [`SlowLink::addr`] to `target`, each
    /// direction `one_way` late (a round trip costs twice that).
    pub async fn start(target: SocketAddr, one_way: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let one_way_us = Arc::new(AtomicU64::new(one_way.as_micros() as u64));
        let delay = one_way_us.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        relay(client_read, server_write, delay.clone()),
                        relay(server_read, client_write, delay)
                    );
                });
            }
        });
        Self {
            addr,
            accept,
            one_way_us,
        }
    }

    /// Changes the delay of every byte read from now on, in each direction
    /// (bytes already in flight keep theirs): a link that slows down or
    /// recovers.
    pub fn set_one_way(&self, one_way: Duration) {
        self.one_way_us
            .store(one_way.as_micros() as u64, Ordering::Relaxed);
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, each chunk written the link's delay after it was read.
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, one_way_us: Arc<AtomicU64>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx
                .send((
                    Instant::now() + Duration::from_micros(one_way_us.load(Ordering::Relaxed)),
                    buf[..n].to_vec(),
                ))
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
