//! A TCP proxy a test controls, in front of a dependency it must not stop (the machine's
//! PostgreSQL, shared by every test): `cut` closes every connection through it and refuses new
//! ones, as a network partition would; `restore` lets connections through again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; it stops accepting when dropped.
pub struct CutProxy {
    /// Its address on 127.0.0.1.
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// A proxy on 127.0.0.1:0 to `target`, open.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, watching) = watch::channel(true);
        let refused = Arc::new(AtomicUsize::new(0));
        let counted = refused.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*watching.borrow() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                let mut watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut inbound, mut outbound) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        // Cut: both sockets are dropped (closed) mid-stream.
                        _ = watching.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        CutProxy {
            addr,
            open,
            refused,
            task,
        }
    }

    /// Closes every open connection and refuses new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }

    /// Connections refused while cut (proof that the dependency was asked during the cut).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
