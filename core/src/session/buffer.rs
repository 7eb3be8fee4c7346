//! Storage seams of the session: byte buffers and the remote key table.
//!
//! The session never allocates by itself. It is generic over a [`Buffer`] (its per-lane
//! transmit queues and reassembly buffers) and a [`KeyTable`] (key ids declared by the peer).
//! On a microcontroller these are fixed-capacity (`heapless::Vec<u8, N>`, [`FixedKeys`]); with
//! `alloc` they are heap-backed and grow up to the caps of the session [`Config`].
//!
//! [`Config`]: super::Config

/// A contiguous, resizable byte buffer.
pub trait Buffer: Default {
    /// The bytes held.
    fn bytes(&self) -> &[u8];
    /// The bytes held, mutably.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Resizes to `len` bytes (new bytes are zero). Returns `false`, leaving the buffer
    /// unchanged, if the storage cannot hold `len` bytes.
    fn resize(&mut self, len: usize) -> bool;
    /// Appends `data`. Returns `false`, leaving the buffer unchanged, if it does not fit.
    fn extend_from_slice(&mut self, data: &[u8]) -> bool {
        let len = self.bytes().len();
        let Some(end) = len.checked_add(data.len()) else {
            return false;
        };
        if !self.resize(end) {
            return false;
        }
        match self.bytes_mut().get_mut(len..end) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
    /// Releases memory held beyond the current length, where the storage can.
    fn shrink(&mut self) {}
    /// Makes room for `additional` more bytes ahead of time, where the storage can (a hint:
    /// growing piecemeal costs copies).
    fn reserve(&mut self, _additional: usize) {}
}

impl<const N: usize> Buffer for heapless::Vec<u8, N> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn resize(&mut self, len: usize) -> bool {
        heapless::Vec::resize(self, len, 0).is_ok()
    }
    fn extend_from_slice(&mut self, data: &[u8]) -> bool {
        heapless::Vec::extend_from_slice(self, data).is_ok()
    }
}

#[cfg(feature = "alloc")]
impl Buffer for alloc::vec::Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn resize(&mut self, len: usize) -> bool {
        if len > self.len() && self.try_reserve(len - self.len()).is_err() {
            return false;
        }
        alloc::vec::Vec::resize(self, len, 0);
        true
    }
    fn extend_from_slice(&mut self, data: &[u8]) -> bool {
        if self.try_reserve(data.len()).is_err() {
            return false;
        }
        alloc::vec::Vec::extend_from_slice(self, data);
        true
    }
    fn reserve(&mut self, additional: usize) {
        let _ = self.try_reserve(additional);
    }
    fn shrink(&mut self) {
        // Keep the buffer for the next burst (regrowing a large one costs page faults and
        // zeroing on every message); give back only what exceeds a few MiB.
        if self.capacity() > 4 << 20 {
            self.shrink_to(1 << 20);
        }
    }
}

/// Key expressions the peer declared on this link, by id.
pub trait KeyTable {
    /// Binds `id` to `key`, replacing any previous binding. Returns `false` if the table is
    /// full or `key` does not fit.
    fn insert(&mut self, id: u32, key: &str) -> bool;
    /// Forgets `id`.
    fn remove(&mut self, id: u32);
    /// The key bound to `id`.
    fn get(&self, id: u32) -> Option<&str>;
    /// Number of bindings.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fixed-capacity key table: at most `N` keys of at most `L` bytes each. Never allocates.
#[derive(Debug, Default)]
pub struct FixedKeys<const N: usize, const L: usize> {
    entries: heapless::Vec<(u32, heapless::String<L>), N>,
}

impl<const N: usize, const L: usize> KeyTable for FixedKeys<N, L> {
    fn insert(&mut self, id: u32, key: &str) -> bool {
        let Ok(s) = heapless::String::<L>::try_from(key) else {
            return false;
        };
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == id) {
            e.1 = s;
            return true;
        }
        self.entries.push((id, s)).is_ok()
    }
    fn remove(&mut self, id: u32) {
        self.entries.retain(|e| e.0 != id);
    }
    fn get(&self, id: u32) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.0 == id)
            .map(|e| e.1.as_str())
    }
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A heap-backed key table holding at most `max` keys (see `Config::max_remote_keys`).
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct HeapKeys {
    map: alloc::collections::BTreeMap<u32, alloc::string::String>,
    /// Most bindings accepted.
    pub max: usize,
}

#[cfg(feature = "alloc")]
impl Default for HeapKeys {
    fn default() -> Self {
        HeapKeys {
            map: alloc::collections::BTreeMap::new(),
            max: 10_000,
        }
    }
}

#[cfg(feature = "alloc")]
impl KeyTable for HeapKeys {
    fn insert(&mut self, id: u32, key: &str) -> bool {
        if self.map.len() >= self.max && !self.map.contains_key(&id) {
            return false;
        }
        self.map.insert(id, alloc::string::String::from(key));
        true
    }
    fn remove(&mut self, id: u32) {
        self.map.remove(&id);
    }
    fn get(&self, id: u32) -> Option<&str> {
        self.map.get(&id).map(|s| s.as_str())
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}
