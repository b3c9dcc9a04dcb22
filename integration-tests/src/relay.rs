//! A TCP relay whose connections can be frozen one by one: a frozen connection stays
//! open on both sides but nothing crosses it any more, which is how a peer that
//! vanished without closing the socket (host down, a NAT dropping the flow) looks
//! from either end. Tests use it to show that a service notices such a connection
//! by itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

/// The relay (see the module doc). Stops, closing every connection, when dropped.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Freeze switch of each open connection, by the local port of its upstream
    /// side (what the upstream server sees as the client's port).
    switches: Arc<Mutex<HashMap<u16, Arc<Notify>>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays every connection to `target` (`host:port`), on a thread of its own so
    /// it keeps moving bytes whatever the test's runtime is doing.
    ///
    /// # Panics
    /// When the listening socket or the thread cannot be created.
    pub fn start(target: &str) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("relay address");
        let switches: Arc<Mutex<HashMap<u16, Arc<Notify>>>> = Arc::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let target = target.to_owned();
        let registry = switches.clone();
        let thread = std::thread::Builder::new()
            .name("test-relay".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("relay runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("relay listener");
                    let accept = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                continue;
                            };
                            let Ok(upstream) = tokio::net::TcpStream::connect(&target).await
                            else {
                                continue;
                            };
                            let Ok(port) = upstream.local_addr().map(|a| a.port()) else {
                                continue;
                            };
                            let freeze = Arc::new(Notify::new());
                            lock(&registry).insert(port, freeze.clone());
                            let registry = registry.clone();
                            tokio::spawn(async move {
                                let (mut client, mut upstream) = (client, upstream);
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                                    () = freeze.notified() => {
                                        // Keep both sockets open and silent until the
                                        // relay stops.
                                        std::future::pending::<()>().await;
                                    }
                                }
                                lock(&registry).remove(&port);
                            });
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("relay thread");
        Relay {
            addr,
            switches,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Freezes the connection whose upstream side has local port `port`. False when
    /// no such connection is open.
    pub fn freeze(&self, port: u16) -> bool {
        match lock(&self.switches).get(&port) {
            Some(switch) => {
                switch.notify_one();
                true
            }
            None => false,
        }
    }
}

fn lock(
    switches: &Mutex<HashMap<u16, Arc<Notify>>>,
) -> std::sync::MutexGuard<'_, HashMap<u16, Arc<Notify>>> {
    switches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
