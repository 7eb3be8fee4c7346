//! In-process links (`mem/NAME`), for tests: bounded channels of batches.

use crate::endpoint::{Endpoint, Protocol};
use crate::link::{ConnectError, Link, LinkError, LinkInfo, LinkRx, LinkTx, ListenError, Listener};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tokio::sync::mpsc;

const QUEUE: usize = 256;

type Registry = Mutex<HashMap<String, mpsc::Sender<Link>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Sending half of an in-process link.
#[derive(Debug)]
pub struct MemTx(Option<mpsc::Sender<Bytes>>);

/// Receiving half of an in-process link.
#[derive(Debug)]
pub struct MemRx(mpsc::Receiver<Bytes>);

impl MemTx {
    pub(crate) async fn send(&mut self, batch: &[u8]) -> Result<(), LinkError> {
        let tx = self.0.as_ref().ok_or(LinkError::Closed)?;
        tx.send(Bytes::copy_from_slice(batch))
            .await
            .map_err(|_| LinkError::Closed)
    }

    pub(crate) async fn close(&mut self) {
        self.0 = None;
    }
}

impl MemRx {
    pub(crate) async fn recv(&mut self) -> Result<Bytes, LinkError> {
        self.0.recv().await.ok_or(LinkError::Closed)
    }
}

/// Unregisters a mem listener's name when dropped.
#[derive(Debug)]
pub(crate) struct MemGuard(String);

impl Drop for MemGuard {
    fn drop(&mut self) {
        if let Ok(mut r) = registry().lock() {
            r.remove(&self.0);
        }
    }
}

pub(crate) fn listen(endpoint: &Endpoint) -> Result<Listener, ListenError> {
    let Endpoint::Mem(name) = endpoint else {
        return Err(ListenError::Address(
            endpoint.clone(),
            "not a mem endpoint".into(),
        ));
    };
    let (tx, rx) = mpsc::channel(64);
    let mut r = registry()
        .lock()
        .map_err(|_| ListenError::Address(endpoint.clone(), "mem registry poisoned".into()))?;
    if r.get(name).is_some_and(|s| !s.is_closed()) {
        return Err(ListenError::Bind {
            endpoint: endpoint.clone(),
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "name in use"),
        });
    }
    r.insert(name.clone(), tx);
    Ok(Listener::new(
        endpoint.clone(),
        rx,
        Vec::new(),
        Some(MemGuard(name.clone())),
    ))
}

pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Link, ConnectError> {
    let Endpoint::Mem(name) = endpoint else {
        return Err(ConnectError::NoListener(endpoint.clone()));
    };
    let listener = registry()
        .lock()
        .ok()
        .and_then(|r| r.get(name).cloned())
        .ok_or_else(|| ConnectError::NoListener(endpoint.clone()))?;
    let (a_tx, a_rx) = mpsc::channel(QUEUE);
    let (b_tx, b_rx) = mpsc::channel(QUEUE);
    let info = LinkInfo {
        protocol: Protocol::Mem,
        local: endpoint.clone(),
        remote: endpoint.clone(),
        mtu: crate::MAX_BATCH,
        reliable: true,
        peer_certificate: None,
        probe: Default::default(),
    };
    let theirs = Link {
        info: info.clone(),
        tx: LinkTx::Mem(MemTx(Some(b_tx))),
        rx: LinkRx::Mem(MemRx(a_rx)),
    };
    listener
        .send(theirs)
        .await
        .map_err(|_| ConnectError::NoListener(endpoint.clone()))?;
    Ok(Link {
        info,
        tx: LinkTx::Mem(MemTx(Some(a_tx))),
        rx: LinkRx::Mem(MemRx(b_rx)),
    })
}
