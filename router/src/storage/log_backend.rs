//! The segment-log backend (the embedded default since issue 17): samples appended to segment
//! files in arrival order, a sorted index per segment, the latest value per key in memory.
//!
//! ```text
//! <dir>/log/keys                        frames: a key string (its id is its position)
//! <dir>/log/nodes                       frames: a 16-byte node id (its index is its position)
//! <dir>/log/floor                       24 B: history before (time BE, node id) is dropped
//! <dir>/log/00000000000000000007.seg    frames: samples, in arrival order
//! <dir>/log/00000000000000000007.idx    a sealed segment's index (below)
//!
//! frame   = len u32 LE | crc32 u32 LE (of body) | body
//! sample  = tag u8 (0 history, 1 carried latest value) | time u64 LE | node varint
//!           | key varint | kind u8 | encoding (0 | 1 len varint bytes) | payload (the rest)
//! .idx    = "HYIX" | version u8 | entries u32 LE | latest u32 LE | crc32 of what follows
//!           | entries × (time u64 LE, node u32, offset u32, len u32, payload len u32),
//!             sorted by (time, node id)
//!           | latest × (key u32, time u64, node u32, offset u32, len u32, kind u8)
//! ```
//!
//! Why a log and not a B-tree: a storage's writes are appends in (nearly) time order and its
//! reads are replays of time windows. A log writes each sample once, sequentially, with 8 bytes
//! of framing and 24 of index; a copy-on-write B-tree (redb) rewrites pages per commit and pays
//! for a second table of latest values. Measured in `storage_bench` and BENCHMARKS.md.
//!
//! **Order and identity.** The history is read in (time, node id) order: the active segment's
//! index is a `Vec` kept sorted on insert (a late sample is inserted near the end), a sealed
//! segment's index is a file read block by block (a sparse index of every 512th entry stays in
//! memory), and a page merges the segments whose time ranges meet the window. A sample's HLC
//! timestamp is unique per node, so a second sample with the same (time, node) — a retried put —
//! is not stored again.
//!
//! **Durability.** A batch is one `write` at the end of the active segment; the segment is
//! fsynced when `flush_ms` have passed since the last sync (the storage's writer calls
//! [`Backend::flush`]), and always when it is sealed. A crash loses at most the unsynced tail:
//! at open, the active segment is read frame by frame and cut at the first frame whose length
//! or checksum does not hold (torn write); what was cut is logged. A sealed segment whose index
//! is missing or damaged is read again and its index rewritten. New keys and nodes are appended
//! to their files and fsynced before the samples that name them are written.
//!
//! **Retention** sets the floor (a (time, node) below which history is gone; saved in `floor`)
//! and deletes whole segments below it. The latest values that lived in a deleted segment are
//! first carried into the active one (tag 1: a latest value, not history), so retention never
//! loses a key's latest value. Expired tombstones are dropped from memory; one whose segment
//! still exists comes back after a restart (kept longer, never resurrecting a key).
//!
//! **A failed write** (a full disk) cuts the segment back to its last whole frame and returns
//! [`StorageError::Io`]: nothing of the batch is stored, what was stored before stays.

use super::backend::{
    Backend, HistoryPage, StorageError, StoredSample, Summary, SyncClock, literal_prefix, matches,
};
use bytes::Bytes;
use hypha_core::hlc::{Ntp64, Timestamp};
use hypha_core::id::NodeId;
use hypha_core::keyexpr::KeyExpr;
use hypha_core::wire::SampleKind;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The directory of the log in a storage's directory.
pub const DIR: &str = "log";

/// A segment is sealed once it holds this many bytes.
const SEGMENT_BYTES: u64 = 16 << 20;
/// One sparse index key per this many entries of a sealed segment.
const SPARSE: usize = 512;
/// Bytes read ahead when a replay reads records.
const READ_AHEAD: usize = 256 << 10;
/// The largest frame the log accepts (a sample is capped far below this by the node).
const MAX_FRAME: u32 = 64 << 20;
/// Bytes of a frame's header.
const FRAME_HEADER: u64 = 8;
const IDX_MAGIC: &[u8; 4] = b"HYIX";
const IDX_VERSION: u8 = 1;
const ENTRY_BYTES: usize = 24;
const LATEST_BYTES: usize = 25;
const TAG_HISTORY: u8 = 0;
const TAG_CARRIED: u8 = 1;

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

/// Where a record is, and what orders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    time: u64,
    /// Index in the node table.
    node: u32,
    /// Offset of the frame in its segment.
    off: u32,
    /// Length of the frame (header included).
    len: u32,
    /// Payload bytes.
    plen: u32,
}

/// A key's latest value.
#[derive(Clone, Copy, Debug)]
struct Latest {
    time: u64,
    node: u32,
    kind: SampleKind,
    seg: u64,
    off: u32,
    len: u32,
}

/// The order of the history: time, then node id (bytes).
type Order = (u64, [u8; 16]);

/// A segment's index: in memory while it is written, then in its `.idx` file.
enum Index {
    Mem(Vec<Entry>),
    File {
        file: File,
        len: usize,
        /// Entry `i * SPARSE`'s order key, for each `i`.
        sparse: Vec<Order>,
        /// The last entry's order key.
        last: Order,
    },
}

struct Segment {
    no: u64,
    file: File,
    /// Bytes of whole frames.
    bytes: u64,
    index: Index,
    /// Payload bytes of the history entries (dead ones below the floor included).
    payload: u64,
    /// Entries below the floor (counted out of the history).
    dead: usize,
    dead_payload: u64,
    /// Latest values that live in this segment, per key id (for its `.idx`).
    latest: HashMap<u32, Latest>,
}

impl Segment {
    fn entries(&self) -> usize {
        match &self.index {
            Index::Mem(v) => v.len(),
            Index::File { len, .. } => *len,
        }
    }
}

/// Samples in segment files (`<dir>/log/`).
pub struct LogBackend {
    dir: PathBuf,
    keys_file: File,
    nodes_file: File,
    /// Key string -> id, and id -> key string.
    ids: HashMap<String, u32>,
    names: Vec<Arc<str>>,
    /// Node id -> index, and index -> node id.
    node_ids: HashMap<NodeId, u32>,
    nodes: Vec<NodeId>,
    /// Sealed segments, oldest first, then the active one (always present, last).
    segs: Vec<Segment>,
    latest: BTreeMap<Arc<str>, Latest>,
    /// History before this is gone.
    floor: Option<Order>,
    count: u64,
    bytes: u64,
    live: u64,
    /// The oldest live history entry.
    oldest: Option<Order>,
    sync: SyncClock,
    segment_bytes: u64,
    /// The encoding of the batch being written (reused).
    buf: Vec<u8>,
}

impl std::fmt::Debug for LogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LogBackend({}, {} samples in {} segments)",
            self.dir.display(),
            self.count,
            self.segs.len()
        )
    }
}

fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// A record of the batch being written, until its frame is on disk.
struct Pending {
    key: u32,
    time: u64,
    node: u32,
    /// The frame's offset in the batch buffer.
    at: usize,
    /// The frame's length.
    len: u32,
    /// The payload's length.
    plen: u32,
    kind: SampleKind,
}

/// LEB128, 64-bit (core's `wire::varint` is 32-bit and crate-private).
fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over a record's bytes.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.0.len() < n {
            return Err(StorageError::Corrupt("a record is cut short".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StorageError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, StorageError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn var(&mut self) -> Result<u64, StorageError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(StorageError::Corrupt("a varint is too long".into()))
    }
}

/// A decoded sample record.
struct Rec<'a> {
    tag: u8,
    time: u64,
    node: u32,
    key: u32,
    kind: SampleKind,
    encoding: Option<&'a str>,
    payload: &'a [u8],
}

fn kind_byte(k: SampleKind) -> u8 {
    match k {
        SampleKind::Put => 0,
        SampleKind::Delete => 1,
    }
}

fn decode_rec(body: &[u8]) -> Result<Rec<'_>, StorageError> {
    let mut c = Cur(body);
    let tag = c.u8()?;
    if tag > TAG_CARRIED {
        return Err(StorageError::Corrupt(format!("unknown record tag {tag}")));
    }
    let time = c.u64()?;
    let node = u32::try_from(c.var()?).map_err(corrupt)?;
    let key = u32::try_from(c.var()?).map_err(corrupt)?;
    let kind = match c.u8()? {
        0 => SampleKind::Put,
        1 => SampleKind::Delete,
        k => return Err(StorageError::Corrupt(format!("unknown sample kind {k}"))),
    };
    let encoding = match c.u8()? {
        0 => None,
        1 => {
            let n = c.var()? as usize;
            Some(std::str::from_utf8(c.take(n)?).map_err(corrupt)?)
        }
        b => return Err(StorageError::Corrupt(format!("bad encoding flag {b}"))),
    };
    Ok(Rec {
        tag,
        time,
        node,
        key,
        kind,
        encoding,
        payload: c.0,
    })
}

/// Appends one frame holding `body` (written by `f`) to `out`.
fn frame(out: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    f(out);
    let body_len = (out.len() - start - 8) as u32;
    let c = crc(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&c.to_le_bytes());
}

/// Reads the whole frames of `file` from `from`; calls `each(offset, body)` for each. Returns
/// where the whole frames end (a torn or damaged tail stops the scan there).
fn scan_frames(file: &File, each: EachFrame<'_>) -> Result<(u64, Option<String>), StorageError> {
    let size = file.metadata()?.len();
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut off = 0u64;
    let mut body = Vec::new();
    loop {
        if off == size {
            return Ok((off, None));
        }
        let mut h = [0u8; 8];
        if size - off < FRAME_HEADER || r.read_exact(&mut h).is_err() {
            return Ok((off, Some(format!("a frame header cut short at byte {off}"))));
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let want = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len > MAX_FRAME || u64::from(len) > size - off - FRAME_HEADER {
            return Ok((
                off,
                Some(format!("a frame of {len} bytes at byte {off} is cut short")),
            ));
        }
        body.resize(len as usize, 0);
        r.read_exact(&mut body)?;
        if crc(&body) != want {
            return Ok((off, Some(format!("a checksum does not hold at byte {off}"))));
        }
        each(off, &body)?;
        off += FRAME_HEADER + u64::from(len);
    }
}

fn seg_path(dir: &Path, no: u64, ext: &str) -> PathBuf {
    dir.join(format!("{no:020}.{ext}"))
}

fn open_rw(p: &Path) -> Result<File, StorageError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)?)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl LogBackend {
    /// Opens (or creates) the log in `<dir>/log/`; unsynced writes are synced every
    /// `flush_ms`.
    pub fn open(dir: &Path, flush_ms: u64) -> Result<Self, StorageError> {
        Self::open_with(dir, flush_ms, SEGMENT_BYTES)
    }

    /// [`open`](Self::open) with segments sealed at `segment_bytes` (tests use small ones).
    pub fn open_with(dir: &Path, flush_ms: u64, segment_bytes: u64) -> Result<Self, StorageError> {
        let log = dir.join(DIR);
        let open_err = |reason: String| StorageError::Open {
            path: log.clone(),
            reason,
        };
        std::fs::create_dir_all(&log).map_err(|e| open_err(e.to_string()))?;
        Self::open_now(&log, flush_ms, segment_bytes.max(1)).map_err(|e| match e {
            e @ StorageError::Open { .. } => e,
            e => open_err(e.to_string()),
        })
    }

    fn open_now(log: &Path, flush_ms: u64, segment_bytes: u64) -> Result<Self, StorageError> {
        let keys_file = open_rw(&log.join("keys"))?;
        let nodes_file = open_rw(&log.join("nodes"))?;
        let mut names = Vec::new();
        let (end, bad) = scan_frames(&keys_file, &mut |_, b| {
            names.push(Arc::<str>::from(std::str::from_utf8(b).map_err(corrupt)?));
            Ok(())
        })?;
        cut_tail(&keys_file, end, bad, "keys")?;
        let mut nodes = Vec::new();
        let (end, bad) = scan_frames(&nodes_file, &mut |_, b| {
            let id: [u8; 16] = b.try_into().map_err(corrupt)?;
            nodes.push(NodeId(id));
            Ok(())
        })?;
        cut_tail(&nodes_file, end, bad, "nodes")?;
        let floor = match std::fs::read(log.join("floor")) {
            Ok(b) if b.len() == 28 && crc(&b[..24]).to_le_bytes() == b[24..] => {
                let mut t = [0u8; 8];
                t.copy_from_slice(&b[..8]);
                let mut n = [0u8; 16];
                n.copy_from_slice(&b[8..24]);
                Some((u64::from_be_bytes(t), n))
            }
            Ok(_) => return Err(StorageError::Corrupt("the floor file is damaged".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let mut nos: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(log)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(no) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                nos.push(no);
            }
        }
        nos.sort_unstable();
        let mut b = LogBackend {
            dir: log.to_path_buf(),
            keys_file,
            nodes_file,
            ids: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i as u32))
                .collect(),
            names,
            node_ids: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (*n, i as u32))
                .collect(),
            nodes,
            segs: Vec::new(),
            latest: BTreeMap::new(),
            floor,
            count: 0,
            bytes: 0,
            live: 0,
            oldest: None,
            sync: SyncClock::new(flush_ms),
            segment_bytes,
            buf: Vec::with_capacity(1 << 20),
        };
        let last = nos.last().copied();
        for no in nos {
            let seg = if Some(no) == last {
                b.scan_segment(no, true)?
            } else {
                match b.load_sealed(no) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(
                            "{}: the index of segment {no} cannot be used ({e}): reading the segment again",
                            b.dir.display()
                        );
                        let mut s = b.scan_segment(no, false)?;
                        b.seal_index(&mut s)?;
                        s
                    }
                }
            };
            b.add_segment(seg)?;
        }
        if b.segs.is_empty() {
            let s = b.new_segment(0)?;
            b.segs.push(s);
        }
        b.recount();
        Ok(b)
    }

    /// Folds a loaded segment's latest values into the map.
    fn add_segment(&mut self, seg: Segment) -> Result<(), StorageError> {
        for (&k, l) in &seg.latest {
            let name = self
                .names
                .get(k as usize)
                .ok_or_else(|| StorageError::Corrupt(format!("unknown key id {k}")))?;
            let newer = self
                .latest
                .get(&**name)
                .is_none_or(|e| self.order(l.time, l.node) > self.order(e.time, e.node));
            if newer {
                self.latest.insert(name.clone(), *l);
            }
        }
        self.segs.push(seg);
        Ok(())
    }

    fn order(&self, time: u64, node: u32) -> Order {
        (
            time,
            self.nodes.get(node as usize).map_or([0xff; 16], |n| n.0),
        )
    }

    fn entry_order(&self, e: &Entry) -> Order {
        self.order(e.time, e.node)
    }

    fn new_segment(&self, no: u64) -> Result<Segment, StorageError> {
        let file = open_rw(&seg_path(&self.dir, no, "seg"))?;
        sync_dir(&self.dir)?;
        Ok(Segment {
            no,
            file,
            bytes: 0,
            index: Index::Mem(Vec::new()),
            payload: 0,
            dead: 0,
            dead_payload: 0,
            latest: HashMap::new(),
        })
    }

    /// Reads a segment frame by frame (the active one at open, or a sealed one whose index is
    /// lost); the active one is cut at a torn tail.
    fn scan_segment(&self, no: u64, active: bool) -> Result<Segment, StorageError> {
        let file = open_rw(&seg_path(&self.dir, no, "seg"))?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut latest: HashMap<u32, Latest> = HashMap::new();
        let mut payload = 0u64;
        let nodes = &self.nodes;
        let ord = |t: u64, n: u32| (t, nodes.get(n as usize).map_or([0xff; 16], |n| n.0));
        let (end, bad) = scan_frames(&file, &mut |off, body| {
            let r = decode_rec(body)?;
            if r.key as usize >= self.names.len() || r.node as usize >= nodes.len() {
                return Err(StorageError::Corrupt(format!(
                    "a record at byte {off} names an unknown key or node"
                )));
            }
            let len = FRAME_HEADER as u32 + body.len() as u32;
            let l = Latest {
                time: r.time,
                node: r.node,
                kind: r.kind,
                seg: no,
                off: off as u32,
                len,
            };
            if latest
                .get(&r.key)
                .is_none_or(|e| ord(r.time, r.node) > ord(e.time, e.node))
            {
                latest.insert(r.key, l);
            }
            if r.tag == TAG_HISTORY {
                entries.push(Entry {
                    time: r.time,
                    node: r.node,
                    off: off as u32,
                    len,
                    plen: r.payload.len() as u32,
                });
                payload += r.payload.len() as u64;
            }
            Ok(())
        })?;
        if let Some(why) = bad {
            if !active {
                return Err(StorageError::Corrupt(format!("sealed segment {no}: {why}")));
            }
            cut_tail(&file, end, Some(why), &format!("segment {no}"))?;
        }
        entries.sort_by_key(|e| ord(e.time, e.node));
        entries.dedup_by_key(|e| ord(e.time, e.node));
        Ok(Segment {
            no,
            file,
            bytes: end,
            index: Index::Mem(entries),
            payload,
            dead: 0,
            dead_payload: 0,
            latest,
        })
    }

    /// Writes a segment's index file and switches it to the file.
    fn seal_index(&self, seg: &mut Segment) -> Result<(), StorageError> {
        let Index::Mem(entries) = &seg.index else {
            return Ok(());
        };
        let mut body = Vec::with_capacity(entries.len() * ENTRY_BYTES + seg.latest.len() * 25);
        for e in entries {
            body.extend_from_slice(&e.time.to_le_bytes());
            body.extend_from_slice(&e.node.to_le_bytes());
            body.extend_from_slice(&e.off.to_le_bytes());
            body.extend_from_slice(&e.len.to_le_bytes());
            body.extend_from_slice(&e.plen.to_le_bytes());
        }
        for (k, l) in &seg.latest {
            body.extend_from_slice(&k.to_le_bytes());
            body.extend_from_slice(&l.time.to_le_bytes());
            body.extend_from_slice(&l.node.to_le_bytes());
            body.extend_from_slice(&l.off.to_le_bytes());
            body.extend_from_slice(&l.len.to_le_bytes());
            body.push(kind_byte(l.kind));
        }
        let mut out = Vec::with_capacity(body.len() + 17);
        out.extend_from_slice(IDX_MAGIC);
        out.push(IDX_VERSION);
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&(seg.latest.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc(&body).to_le_bytes());
        out.extend_from_slice(&body);
        let tmp = seg_path(&self.dir, seg.no, "idx.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, seg_path(&self.dir, seg.no, "idx"))?;
        sync_dir(&self.dir)?;
        let sparse = entries
            .iter()
            .step_by(SPARSE)
            .map(|e| self.entry_order(e))
            .collect();
        let last = entries.last().map_or((0, [0; 16]), |e| self.entry_order(e));
        let len = entries.len();
        seg.index = Index::File {
            file: File::open(seg_path(&self.dir, seg.no, "idx"))?,
            len,
            sparse,
            last,
        };
        Ok(())
    }

    fn load_sealed(&self, no: u64) -> Result<Segment, StorageError> {
        let file = File::open(seg_path(&self.dir, no, "seg"))?;
        let bytes = file.metadata()?.len();
        let idx = std::fs::read(seg_path(&self.dir, no, "idx"))?;
        if idx.len() < 17 || &idx[..4] != IDX_MAGIC || idx[4] != IDX_VERSION {
            return Err(StorageError::Corrupt("not an index file".into()));
        }
        let mut c = Cur(&idx[5..]);
        let n = c.u32()? as usize;
        let nl = c.u32()? as usize;
        let want = c.u32()?;
        let body = c.0;
        if body.len() != n * ENTRY_BYTES + nl * LATEST_BYTES || crc(body) != want {
            return Err(StorageError::Corrupt("its checksum does not hold".into()));
        }
        let mut c = Cur(body);
        let mut sparse = Vec::with_capacity(n / SPARSE + 1);
        let mut payload = 0u64;
        let mut last = (0, [0u8; 16]);
        for i in 0..n {
            let (time, node) = (c.u64()?, c.u32()?);
            let (_, len, plen) = (c.u32()?, c.u32()?, c.u32()?);
            if node as usize >= self.nodes.len() || u64::from(len) > bytes {
                return Err(StorageError::Corrupt(format!("entry {i} is out of range")));
            }
            payload += u64::from(plen);
            last = self.order(time, node);
            if i % SPARSE == 0 {
                sparse.push(last);
            }
        }
        let mut latest = HashMap::with_capacity(nl);
        for _ in 0..nl {
            let key = c.u32()?;
            let (time, node, off, len) = (c.u64()?, c.u32()?, c.u32()?, c.u32()?);
            let kind = match c.u8()? {
                0 => SampleKind::Put,
                _ => SampleKind::Delete,
            };
            if key as usize >= self.names.len() || node as usize >= self.nodes.len() {
                return Err(StorageError::Corrupt(
                    "a latest value is out of range".into(),
                ));
            }
            latest.insert(
                key,
                Latest {
                    time,
                    node,
                    kind,
                    seg: no,
                    off,
                    len,
                },
            );
        }
        Ok(Segment {
            no,
            file,
            bytes,
            index: Index::File {
                file: File::open(seg_path(&self.dir, no, "idx"))?,
                len: n,
                sparse,
                last,
            },
            payload,
            dead: 0,
            dead_payload: 0,
            latest,
        })
    }

    /// Entries `from..from + n` of a segment's index.
    fn read_entries(
        &self,
        seg: &Segment,
        from: usize,
        n: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        match &seg.index {
            Index::Mem(v) => Ok(v[from.min(v.len())..(from + n).min(v.len())].to_vec()),
            Index::File { file, len, .. } => {
                let n = n.min(len.saturating_sub(from));
                let mut b = vec![0u8; n * ENTRY_BYTES];
                file.read_exact_at(&mut b, 17 + (from * ENTRY_BYTES) as u64)?;
                let mut c = Cur(&b);
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(Entry {
                        time: c.u64()?,
                        node: c.u32()?,
                        off: c.u32()?,
                        len: c.u32()?,
                        plen: c.u32()?,
                    });
                }
                Ok(out)
            }
        }
    }

    /// The position of the first entry of `seg` ordered after `key` (`incl`: at or after).
    fn lower_bound(&self, seg: &Segment, key: Order, incl: bool) -> Result<usize, StorageError> {
        let before = |o: Order| if incl { o < key } else { o <= key };
        match &seg.index {
            Index::Mem(v) => Ok(v.partition_point(|e| before(self.entry_order(e)))),
            Index::File { len, sparse, .. } => {
                // The sparse block where the bound is, then that block.
                let blk = sparse.partition_point(|o| before(*o)).saturating_sub(1);
                let from = blk * SPARSE;
                let es = self.read_entries(seg, from, SPARSE + 1)?;
                let p = es.partition_point(|e| before(self.entry_order(e)));
                Ok((from + p).min(*len))
            }
        }
    }

    /// A segment's first and last order keys.
    fn range_of(&self, seg: &Segment) -> Option<(Order, Order)> {
        match &seg.index {
            Index::Mem(v) => Some((self.entry_order(v.first()?), self.entry_order(v.last()?))),
            Index::File { sparse, last, .. } => Some((*sparse.first()?, *last)),
        }
    }

    fn contains(&self, key: Order) -> Result<bool, StorageError> {
        for seg in self.segs.iter().rev() {
            let Some((lo, hi)) = self.range_of(seg) else {
                continue;
            };
            if key < lo || key > hi {
                continue;
            }
            let p = self.lower_bound(seg, key, true)?;
            if let Some(e) = self.read_entries(seg, p, 1)?.first()
                && self.entry_order(e) == key
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Recomputes count, bytes and live keys from the segments, the floor and the latest map.
    fn recount(&mut self) {
        let floor = self.floor;
        let mut dead = Vec::with_capacity(self.segs.len());
        for seg in &self.segs {
            let d = match floor {
                None => Ok((0, 0)),
                Some(f) => self.dead_below(seg, f),
            };
            dead.push(d.unwrap_or((0, 0)));
        }
        for (seg, (d, dp)) in self.segs.iter_mut().zip(dead) {
            seg.dead = d;
            seg.dead_payload = dp;
        }
        self.count = self
            .segs
            .iter()
            .map(|s| (s.entries() - s.dead) as u64)
            .sum();
        self.bytes = self
            .segs
            .iter()
            .map(|s| s.payload.saturating_sub(s.dead_payload))
            .sum();
        self.live = self
            .latest
            .values()
            .filter(|l| l.kind == SampleKind::Put)
            .count() as u64;
        self.oldest = self
            .segs
            .iter()
            .filter_map(|s| {
                let e = self.read_entries(s, s.dead, 1).ok()?;
                e.first().map(|e| self.entry_order(e))
            })
            .min();
    }

    /// How many entries of `seg` (and their payload bytes) are below `floor`.
    fn dead_below(&self, seg: &Segment, floor: Order) -> Result<(usize, u64), StorageError> {
        let n = self.lower_bound(seg, floor, true)?;
        if n == seg.entries() {
            return Ok((n, seg.payload));
        }
        let mut p = 0u64;
        let mut at = 0;
        while at < n {
            let es = self.read_entries(seg, at, (n - at).min(8192))?;
            p += es.iter().map(|e| u64::from(e.plen)).sum::<u64>();
            at += es.len();
        }
        Ok((n, p))
    }

    fn key_id(&mut self, key: &str, new: &mut Vec<u8>) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = self.names.len() as u32;
        frame(new, |b| b.extend_from_slice(key.as_bytes()));
        self.ids.insert(key.to_string(), id);
        self.names.push(Arc::from(key));
        id
    }

    fn node_idx(&mut self, node: NodeId, new: &mut Vec<u8>) -> u32 {
        if let Some(i) = self.node_ids.get(&node) {
            return *i;
        }
        let i = self.nodes.len() as u32;
        frame(new, |b| b.extend_from_slice(&node.0));
        self.node_ids.insert(node, i);
        self.nodes.push(node);
        i
    }

    /// Appends `bytes` to a dictionary file and syncs it (before any sample names what it
    /// defines).
    fn append_dict(file: &mut File, bytes: &[u8]) -> Result<(), StorageError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let len = file.metadata()?.len();
        if let Err(e) = file
            .write_all_at(bytes, len)
            .and_then(|()| file.sync_data())
        {
            let _ = file.set_len(len);
            return Err(e.into());
        }
        Ok(())
    }

    fn active(&self) -> Result<&Segment, StorageError> {
        self.segs.last().ok_or_else(no_active)
    }

    fn active_mut(&mut self) -> Result<&mut Segment, StorageError> {
        self.segs.last_mut().ok_or_else(no_active)
    }

    /// Seals the active segment and starts the next one.
    fn roll(&mut self) -> Result<(), StorageError> {
        let mut seg = self.segs.pop().ok_or_else(no_active)?;
        let r = seg
            .file
            .sync_data()
            .map_err(StorageError::from)
            .and_then(|()| self.seal_index(&mut seg));
        let no = seg.no + 1;
        self.segs.push(seg);
        r?;
        let next = self.new_segment(no)?;
        self.segs.push(next);
        self.sync.synced();
        Ok(())
    }

    fn write_batch(&mut self, batch: &[StoredSample]) -> Result<usize, StorageError> {
        if self.active()?.bytes >= self.segment_bytes {
            self.roll()?;
        }
        let (names_before, nodes_before) = (self.names.len(), self.nodes.len());
        let mut new_keys = Vec::new();
        let mut new_nodes = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let base = self.active()?.bytes;
        let mut recs: Vec<Pending> = Vec::with_capacity(batch.len());
        // (time, node) of this batch's records: a retry within the batch is stored once.
        let mut in_batch: rustc_hash::FxHashSet<(u64, u32)> = Default::default();
        for s in batch {
            let node = self.node_idx(s.timestamp.id, &mut new_nodes);
            let key = self.key_id(&s.key, &mut new_keys);
            let time = s.timestamp.time.0;
            let o = self.order(time, node);
            // A retried sample (same timestamp, same node) is stored once. One older than the
            // floor is already past retention: not stored.
            if self.floor.is_some_and(|f| o < f)
                || in_batch.contains(&(time, node))
                || self.contains(o)?
            {
                continue;
            }
            let at = buf.len();
            frame(&mut buf, |b| {
                b.push(TAG_HISTORY);
                b.extend_from_slice(&time.to_le_bytes());
                put_var(b, u64::from(node));
                put_var(b, u64::from(key));
                b.push(kind_byte(s.kind));
                match &s.encoding {
                    None => b.push(0),
                    Some(e) => {
                        b.push(1);
                        put_var(b, e.len() as u64);
                        b.extend_from_slice(e.as_bytes());
                    }
                }
                b.extend_from_slice(&s.payload);
            });
            let len = (buf.len() - at) as u32;
            in_batch.insert((time, node));
            recs.push(Pending {
                key,
                time,
                node,
                at,
                len,
                plen: s.payload.len() as u32,
                kind: s.kind,
            });
        }
        if base + buf.len() as u64 > u64::from(u32::MAX) {
            let n = buf.len();
            self.buf = buf;
            return Err(StorageError::Config(format!(
                "a batch of {n} bytes does not fit in a segment"
            )));
        }
        // New keys and nodes first, synced; an entry that reached its file stays (the files'
        // positions are the ids), one that did not is forgotten.
        if let Err(e) = Self::append_dict(&mut self.keys_file, &new_keys) {
            for n in self.names.drain(names_before..) {
                self.ids.remove(&*n);
            }
            for n in self.nodes.drain(nodes_before..) {
                self.node_ids.remove(&n);
            }
            self.buf = buf;
            return Err(e);
        }
        if let Err(e) = Self::append_dict(&mut self.nodes_file, &new_nodes) {
            for n in self.nodes.drain(nodes_before..) {
                self.node_ids.remove(&n);
            }
            self.buf = buf;
            return Err(e);
        }
        let seg = self.active()?;
        if let Err(e) = seg.file.write_all_at(&buf, base) {
            let _ = seg.file.set_len(base);
            self.buf = buf;
            return Err(e.into());
        }
        self.buf = buf;
        let mut changed = 0;
        let seg_no = self.active()?.no;
        for Pending {
            key,
            time,
            node,
            at,
            len,
            plen,
            kind,
        } in recs
        {
            let off = (base + at as u64) as u32;
            let e = Entry {
                time,
                node,
                off,
                len,
                plen,
            };
            let o = self.order(time, node);
            let nodes = &self.nodes;
            let ord = |e: &Entry| {
                (
                    e.time,
                    nodes.get(e.node as usize).map_or([0xff; 16], |n| n.0),
                )
            };
            let seg = self.segs.last_mut().ok_or_else(no_active)?;
            if let Index::Mem(v) = &mut seg.index {
                // Nearly always at the end; a late sample (publishers that waited for room
                // go in any order) is placed by binary search.
                if v.last().is_none_or(|x| ord(x) <= o) {
                    v.push(e);
                } else {
                    let p = v.partition_point(|x| ord(x) <= o);
                    v.insert(p, e);
                }
            }
            seg.payload += u64::from(plen);
            if self.oldest.is_none_or(|x| o < x) {
                self.oldest = Some(o);
            }
            self.count += 1;
            self.bytes += u64::from(plen);
            let name = &self.names[key as usize];
            let l = Latest {
                time,
                node,
                kind,
                seg: seg_no,
                off,
                len,
            };
            let prev = self.latest.get(&**name).copied();
            if prev.is_none_or(|x| self.order(x.time, x.node) < o) {
                let was_live = prev.is_some_and(|x| x.kind == SampleKind::Put);
                match (was_live, kind == SampleKind::Put) {
                    (false, true) => self.live += 1,
                    (true, false) => self.live = self.live.saturating_sub(1),
                    _ => {}
                }
                match self.latest.get_mut(&**name) {
                    Some(x) => *x = l,
                    None => {
                        self.latest.insert(name.clone(), l);
                    }
                }
                let seg = self.active_mut()?;
                seg.latest.insert(key, l);
                changed += 1;
            }
        }
        let end = base + self.buf.len() as u64;
        self.active_mut()?.bytes = end;
        self.sync.written();
        Ok(changed)
    }

    /// The body of the record at `off` (its checksum checked), read through `cache` (one
    /// block, reused: a fresh block per page cost more in page faults and zeroing than
    /// copying each payload out of a reused one).
    fn read_frame<'c>(
        &self,
        seg: &Segment,
        off: u32,
        len: u32,
        cache: &'c mut ReadCache,
    ) -> Result<&'c [u8], StorageError> {
        let (off, len) = (u64::from(off), len as usize);
        let hit = cache.seg == seg.no
            && off >= cache.at
            && off + len as u64 <= cache.at + cache.buf.len() as u64;
        if !hit {
            let want = len
                .max(cache.ahead)
                .min((seg.bytes.saturating_sub(off)) as usize);
            if want < len {
                return Err(StorageError::Corrupt(format!(
                    "segment {}: a record at byte {off} runs past the end",
                    seg.no
                )));
            }
            cache.buf.resize(want, 0);
            if let Err(e) = seg.file.read_exact_at(&mut cache.buf, off) {
                cache.buf.clear();
                return Err(e.into());
            }
            cache.seg = seg.no;
            cache.at = off;
        }
        let s = (off - cache.at) as usize;
        let f = &cache.buf[s..s + len];
        let body = &f[FRAME_HEADER as usize..];
        if crc(body).to_le_bytes() != f[4..8] {
            return Err(StorageError::Corrupt(format!(
                "segment {}: the checksum of the record at byte {off} does not hold",
                seg.no
            )));
        }
        Ok(body)
    }

    fn segment(&self, no: u64) -> Option<&Segment> {
        self.segs
            .binary_search_by_key(&no, |s| s.no)
            .ok()
            .map(|i| &self.segs[i])
    }

    fn sample_at(
        &self,
        seg: &Segment,
        off: u32,
        len: u32,
        cache: &mut ReadCache,
    ) -> Result<StoredSample, StorageError> {
        self.sample_if(seg, off, len, cache, |_, _| true)
            .and_then(|s| s.ok_or_else(|| StorageError::Corrupt("a record was passed over".into())))
    }

    /// The sample at `off` if `keep(key id, key)` says so (decoded only then).
    fn sample_if(
        &self,
        seg: &Segment,
        off: u32,
        len: u32,
        cache: &mut ReadCache,
        mut keep: impl FnMut(u32, &str) -> bool,
    ) -> Result<Option<StoredSample>, StorageError> {
        let body = self.read_frame(seg, off, len, cache)?;
        let r = decode_rec(body)?;
        let key = self
            .names
            .get(r.key as usize)
            .ok_or_else(|| StorageError::Corrupt(format!("unknown key id {}", r.key)))?;
        let id = *self
            .nodes
            .get(r.node as usize)
            .ok_or_else(|| StorageError::Corrupt(format!("unknown node {}", r.node)))?;
        if !keep(r.key, key) {
            return Ok(None);
        }
        Ok(Some(StoredSample {
            key: key.clone(),
            kind: r.kind,
            payload: Bytes::copy_from_slice(r.payload),
            timestamp: Timestamp {
                time: Ntp64(r.time),
                id,
            },
            encoding: r.encoding.map(Arc::from),
        }))
    }

    fn latest_sample(
        &self,
        l: &Latest,
        cache: &mut ReadCache,
    ) -> Result<StoredSample, StorageError> {
        let seg = self.segment(l.seg).ok_or_else(|| {
            StorageError::Corrupt(format!(
                "a latest value is in segment {}, which is gone",
                l.seg
            ))
        })?;
        self.sample_at(seg, l.off, l.len, cache)
    }

    fn write_floor(&self, f: Order) -> Result<(), StorageError> {
        let mut b = Vec::with_capacity(28);
        b.extend_from_slice(&f.0.to_be_bytes());
        b.extend_from_slice(&f.1);
        b.extend_from_slice(&crc(&b).to_le_bytes());
        let tmp = self.dir.join("floor.tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&b)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join("floor"))?;
        sync_dir(&self.dir)
    }

    /// Deletes the sealed segments wholly below the floor, carrying their latest values into
    /// the active segment first.
    fn drop_dead_segments(&mut self) -> Result<(), StorageError> {
        loop {
            if self.segs.len() < 2 || self.segs[0].dead < self.segs[0].entries() {
                return Ok(());
            }
            let no = self.segs[0].no;
            let carry: Vec<(Arc<str>, Latest)> = self
                .latest
                .iter()
                .filter(|(_, l)| l.seg == no)
                .map(|(k, l)| (k.clone(), *l))
                .collect();
            if !carry.is_empty() {
                self.carry(&carry)?;
            }
            let seg = self.segs.remove(0);
            drop(seg);
            std::fs::remove_file(seg_path(&self.dir, no, "idx")).or_else(not_found)?;
            std::fs::remove_file(seg_path(&self.dir, no, "seg")).or_else(not_found)?;
        }
    }

    /// Re-appends latest values (tag 1) to the active segment and points the map at them.
    fn carry(&mut self, carry: &[(Arc<str>, Latest)]) -> Result<(), StorageError> {
        let mut cache = ReadCache::default();
        let mut buf = Vec::new();
        let mut at = Vec::with_capacity(carry.len());
        for (_, l) in carry {
            let seg = self
                .segment(l.seg)
                .ok_or_else(|| StorageError::Corrupt(format!("segment {} is gone", l.seg)))?;
            let body = self.read_frame(seg, l.off, l.len, &mut cache)?.to_vec();
            let start = buf.len();
            frame(&mut buf, |b| {
                b.push(TAG_CARRIED);
                b.extend_from_slice(&body[1..]);
            });
            at.push((start, buf.len() - start));
        }
        let seg = self.active()?;
        let base = seg.bytes;
        if let Err(e) = seg
            .file
            .write_all_at(&buf, base)
            .and_then(|()| seg.file.sync_data())
        {
            let _ = seg.file.set_len(base);
            return Err(e.into());
        }
        let no = seg.no;
        for ((name, l), (start, len)) in carry.iter().zip(at) {
            let nl = Latest {
                seg: no,
                off: (base + start as u64) as u32,
                len: len as u32,
                ..*l
            };
            self.latest.insert(name.clone(), nl);
            if let Some(&k) = self.ids.get(&**name) {
                self.active_mut()?.latest.insert(k, nl);
            }
        }
        self.active_mut()?.bytes = base + buf.len() as u64;
        Ok(())
    }

    /// Raises the floor to `f` (never lowers it), saves it, and drops what it frees.
    fn raise_floor(&mut self, f: Order) -> Result<usize, StorageError> {
        if self.floor.is_some_and(|old| old >= f) {
            return Ok(0);
        }
        let before = self.count;
        self.write_floor(f)?;
        self.floor = Some(f);
        self.recount();
        self.drop_dead_segments()?;
        Ok((before - self.count) as usize)
    }

    /// The order key of the `k`-th live entry (0-based) in history order, if there is one.
    fn nth_live(&self, k: u64) -> Result<Option<Order>, StorageError> {
        let mut m = Merge::new(self, self.floor, true)?;
        let mut i = 0u64;
        while let Some((_, e)) = m.next(self)? {
            if i == k {
                return Ok(Some(self.entry_order(&e)));
            }
            i += 1;
        }
        Ok(None)
    }
}

fn no_active() -> StorageError {
    StorageError::Corrupt("the log has no active segment".into())
}

/// What [`scan_frames`] calls for each whole frame: its offset and body.
type EachFrame<'a> = &'a mut dyn FnMut(u64, &[u8]) -> Result<(), StorageError>;

fn not_found(e: std::io::Error) -> Result<(), std::io::Error> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Cuts a file back to its whole frames, saying what was cut.
fn cut_tail(file: &File, end: u64, why: Option<String>, what: &str) -> Result<(), StorageError> {
    if let Some(why) = why {
        let size = file.metadata()?.len();
        tracing::warn!(
            "storage log: {what}: {why}; cutting {} bytes after the last whole record (an unsynced write torn by a crash)",
            size - end
        );
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(())
}

/// The last block of a segment that a replay read.
struct ReadCache {
    seg: u64,
    at: u64,
    buf: Vec<u8>,
    /// Bytes to read at once (what the page will probably use, at most [`READ_AHEAD`]).
    ahead: usize,
}

impl Default for ReadCache {
    fn default() -> Self {
        ReadCache {
            seg: 0,
            at: 0,
            buf: Vec::new(),
            ahead: READ_AHEAD,
        }
    }
}

/// A merge of the segments' indexes in history order, from a bound.
struct Merge {
    /// Per segment (index into `segs`): the next position, its end, and a block of entries.
    heads: Vec<(usize, usize, usize, std::collections::VecDeque<Entry>)>,
    /// Entries read from an index at once.
    block: usize,
}

impl Merge {
    fn new(b: &LogBackend, start: Option<Order>, incl: bool) -> Result<Self, StorageError> {
        Self::with_block(b, start, incl, 4096)
    }

    fn with_block(
        b: &LogBackend,
        start: Option<Order>,
        incl: bool,
        block: usize,
    ) -> Result<Self, StorageError> {
        let mut heads = Vec::new();
        for (i, seg) in b.segs.iter().enumerate() {
            let Some((_, hi)) = b.range_of(seg) else {
                continue;
            };
            let pos = match start {
                Some(s) if (incl && hi < s) || (!incl && hi <= s) => continue,
                Some(s) => b.lower_bound(seg, s, incl)?,
                None => 0,
            };
            // Entries below the floor are gone.
            let pos = pos.max(seg.dead);
            if pos < seg.entries() {
                heads.push((i, pos, seg.entries(), Default::default()));
            }
        }
        Ok(Merge {
            heads,
            block: block.clamp(16, 4096),
        })
    }

    /// The next entry in history order, and the index of its segment.
    fn next(&mut self, b: &LogBackend) -> Result<Option<(usize, Entry)>, StorageError> {
        let mut best: Option<(usize, Order)> = None;
        for h in 0..self.heads.len() {
            let (si, pos, end, q) = &mut self.heads[h];
            if q.is_empty() && *pos < *end {
                let es = b.read_entries(&b.segs[*si], *pos, (*end - *pos).min(self.block))?;
                *pos += es.len();
                q.extend(es);
            }
            if let Some(e) = q.front() {
                let o = b.entry_order(e);
                if best.is_none_or(|(_, bo)| o < bo) {
                    best = Some((h, o));
                }
            }
        }
        let Some((h, _)) = best else {
            return Ok(None);
        };
        let si = self.heads[h].0;
        Ok(self.heads[h].3.pop_front().map(|e| (si, e)))
    }
}

impl Backend for LogBackend {
    fn store(&mut self, s: &StoredSample) -> Result<bool, StorageError> {
        Ok(self.store_batch(std::slice::from_ref(s))? > 0)
    }

    fn store_batch(&mut self, batch: &[StoredSample]) -> Result<usize, StorageError> {
        self.write_batch(batch)
    }

    fn latest(&self, key: &KeyExpr<'_>) -> Result<Vec<StoredSample>, StorageError> {
        let mut cache = ReadCache::default();
        if !key.is_wild() {
            return self
                .latest
                .get(key.as_str())
                .map(|l| self.latest_sample(l, &mut cache))
                .into_iter()
                .collect();
        }
        let prefix = literal_prefix(key);
        let mut out = Vec::new();
        let from: &str = &prefix;
        for (k, l) in self
            .latest
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
        {
            if !k.starts_with(&prefix) {
                break;
            }
            if matches(key, k) {
                out.push(self.latest_sample(l, &mut cache)?);
            }
        }
        Ok(out)
    }

    fn history_page(
        &self,
        key: &KeyExpr<'_>,
        after: Option<&[u8]>,
        from: Ntp64,
        to: Ntp64,
        limit: usize,
        scan: usize,
    ) -> Result<HistoryPage, StorageError> {
        let start = match after {
            Some(a) => {
                let (Some(t), Some(n)) = (a.get(..8), a.get(8..24)) else {
                    return Err(StorageError::Corrupt(
                        "a history cursor is too short".into(),
                    ));
                };
                let mut tb = [0u8; 8];
                tb.copy_from_slice(t);
                let mut nb = [0u8; 16];
                nb.copy_from_slice(n);
                ((u64::from_be_bytes(tb), nb), false)
            }
            None => ((from.0, [0u8; 16]), true),
        };
        // Read what the page will look at, not more.
        let want = limit.min(scan).saturating_add(1);
        let mut m = Merge::with_block(self, Some(start.0), start.1, want)?;
        let mut page = HistoryPage::default();
        let mut cache = ReadCache::default();
        let mut sized = false;
        let mut verdicts: rustc_hash::FxHashMap<u32, bool> = Default::default();
        let mut last: Option<Order> = None;
        let mut seen = 0;
        while let Some((si, e)) = m.next(self)? {
            if e.time > to.0 {
                return Ok(page);
            }
            if seen >= scan.max(1) || page.samples.len() >= limit {
                page.next = last.map(|(t, n)| {
                    let mut c = t.to_be_bytes().to_vec();
                    c.extend_from_slice(&n);
                    c
                });
                return Ok(page);
            }
            seen += 1;
            if !sized {
                cache.ahead = (e.len as usize).saturating_mul(want).min(READ_AHEAD);
                sized = true;
            }
            // Whether a key matches is worked out once per key of the page, not per sample.
            let keep = |id: u32, name: &str| match verdicts.get(&id) {
                Some(&m) => m,
                None => {
                    let m = matches(key, name);
                    if verdicts.len() < 4096 {
                        verdicts.insert(id, m);
                    }
                    m
                }
            };
            if let Some(s) = self.sample_if(&self.segs[si], e.off, e.len, &mut cache, keep)? {
                page.samples.push(s);
            }
            last = Some(self.entry_order(&e));
        }
        Ok(page)
    }

    fn prune(
        &mut self,
        before: Option<Ntp64>,
        keep: Option<usize>,
        tombstones_before: Option<Ntp64>,
    ) -> Result<usize, StorageError> {
        let mut n = 0;
        if let Some(b) = before {
            n += self.raise_floor((b.0, [0u8; 16]))?;
        }
        if let Some(keep) = keep
            && self.count > keep as u64
            && let Some(f) = self.nth_live(self.count - keep as u64)?
        {
            n += self.raise_floor(f)?;
        }
        if let Some(t) = tombstones_before {
            let gone: Vec<Arc<str>> = self
                .latest
                .iter()
                .filter(|(_, l)| l.kind == SampleKind::Delete && l.time < t.0)
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                if let Some(l) = self.latest.remove(&k) {
                    if let (Some(&id), Some(seg)) = (
                        self.ids.get(&*k),
                        self.segs.iter_mut().find(|s| s.no == l.seg),
                    ) {
                        seg.latest.remove(&id);
                    }
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        if !self.sync.unsynced() {
            return Ok(());
        }
        self.active()?.file.sync_data()?;
        self.sync.synced();
        Ok(())
    }

    fn flush_due(&self) -> bool {
        self.sync.due()
    }

    fn history_len(&self) -> usize {
        self.count as usize
    }

    fn summary(&self) -> Summary {
        Summary {
            keys: self.live,
            samples: self.count,
            bytes: self.bytes,
            oldest: self.oldest.map(|(t, n)| Timestamp {
                time: Ntp64(t),
                id: NodeId(n),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(key: &str, t: u64, node: u128, payload: &[u8]) -> StoredSample {
        StoredSample {
            key: key.into(),
            kind: SampleKind::Put,
            payload: Bytes::copy_from_slice(payload),
            timestamp: Timestamp {
                time: Ntp64(t),
                id: NodeId::from_u128(node),
            },
            encoding: (t % 3 == 0).then(|| Arc::from("text/plain")),
        }
    }

    fn all(b: &dyn Backend) -> Vec<StoredSample> {
        b.history(
            &KeyExpr::new("**").unwrap(),
            Ntp64(0),
            Ntp64(u64::MAX),
            usize::MAX,
        )
        .unwrap()
    }

    fn times(v: &[StoredSample]) -> Vec<u64> {
        v.iter().map(|s| s.timestamp.time.0).collect()
    }

    /// Samples from two nodes, arriving out of order, across many small segments: the history
    /// comes back in (time, node) order, the same after a reopen (sealed indexes read from
    /// their files), and paging through it with every page size gives the same samples.
    #[test]
    fn order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        {
            let mut b = LogBackend::open_with(dir.path(), 100, 2_000).unwrap();
            for i in 0..600u64 {
                // Each batch: times going down then up, two nodes with the same times.
                let batch: Vec<StoredSample> = (0..6)
                    .map(|j| {
                        s(
                            &format!("k/{}", (i + j) % 7),
                            10_000 + i * 3 - j % 3,
                            1 + (j as u128 % 2),
                            &[i as u8; 40],
                        )
                    })
                    .collect();
                b.store_batch(&batch).unwrap();
                want.extend(batch);
            }
            assert!(b.segs.len() > 20, "{} segments", b.segs.len());
            want.sort_by_key(|s| (s.timestamp.time, s.timestamp.id.0));
            want.dedup_by_key(|s| (s.timestamp.time, s.timestamp.id.0));
            assert_eq!(b.history_len(), want.len());
            assert_eq!(all(&b), want);
        }
        let b = LogBackend::open_with(dir.path(), 100, 2_000).unwrap();
        assert_eq!(b.history_len(), want.len());
        assert_eq!(all(&b), want);
        for (limit, scan) in [(1, 1), (7, 1000), (1000, 13)] {
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let p = b
                    .history_page(
                        &KeyExpr::new("**").unwrap(),
                        after.as_deref(),
                        Ntp64(10_100),
                        Ntp64(11_000),
                        limit,
                        scan,
                    )
                    .unwrap();
                got.extend(p.samples);
                match p.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            let w: Vec<_> = want
                .iter()
                .filter(|s| (10_100..=11_000).contains(&s.timestamp.time.0))
                .cloned()
                .collect();
            assert_eq!(got, w, "limit {limit} scan {scan}");
        }
        // The latest value of each key is its newest sample.
        let latest = b.latest(&KeyExpr::new("k/*").unwrap()).unwrap();
        assert_eq!(latest.len(), 7);
        for l in &latest {
            let newest = want
                .iter()
                .filter(|s| s.key == l.key)
                .max_by_key(|s| (s.timestamp.time, s.timestamp.id.0))
                .unwrap();
            assert_eq!(l, newest);
        }
    }

    /// A crash tears the last write: the tail is cut at the last whole record, everything before
    /// it is kept, and the log goes on from there.
    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut b = LogBackend::open(dir.path(), 100).unwrap();
            for i in 0..10 {
                b.store(&s("a", 100 + i, 1, b"0123456789")).unwrap();
            }
            b.flush().unwrap();
        }
        let seg = seg_path(&dir.path().join(DIR), 0, "seg");
        let size = std::fs::metadata(&seg).unwrap().len();
        // Half of the last record, then garbage.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(size - 5).unwrap();
        f.write_all_at(b"\xff\xff\xff", size - 5).unwrap();
        drop(f);
        let mut b = LogBackend::open(dir.path(), 100).unwrap();
        assert_eq!(times(&all(&b)), (100..109).collect::<Vec<_>>());
        b.store(&s("a", 200, 1, b"after")).unwrap();
        drop(b);
        let b = LogBackend::open(dir.path(), 100).unwrap();
        assert_eq!(b.history_len(), 10);
        assert_eq!(
            b.latest(&KeyExpr::new("a").unwrap()).unwrap()[0].payload,
            b"after"[..]
        );
        // A flipped byte in the middle of a record: its checksum fails, it and what follows
        // are cut (the active segment), and said.
        let size = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"\x00", size - 3).unwrap();
        drop(f);
        let b = LogBackend::open(dir.path(), 100).unwrap();
        assert_eq!(b.history_len(), 9);
    }

    /// A sealed segment's damaged index is rebuilt from the segment; a damaged sealed segment
    /// makes the open fail with an error naming the log.
    #[test]
    fn a_damaged_index_is_rebuilt_and_a_damaged_segment_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut b = LogBackend::open_with(dir.path(), 100, 500).unwrap();
            for i in 0..100 {
                b.store(&s(&format!("k/{}", i % 5), 100 + i, 1, &[7; 30]))
                    .unwrap();
            }
            assert!(b.segs.len() > 3);
        }
        let log = dir.path().join(DIR);
        std::fs::write(seg_path(&log, 1, "idx"), b"HYIX\x01garbage").unwrap();
        std::fs::remove_file(seg_path(&log, 2, "idx")).unwrap();
        let b = LogBackend::open_with(dir.path(), 100, 500).unwrap();
        assert_eq!(times(&all(&b)), (100..200).collect::<Vec<_>>());
        drop(b);
        assert!(
            seg_path(&log, 2, "idx").exists(),
            "the index was written again"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(seg_path(&log, 1, "seg"))
            .unwrap();
        f.write_all_at(b"\x00\x00\x00", 20).unwrap();
        drop(f);
        std::fs::remove_file(seg_path(&log, 1, "idx")).unwrap();
        match LogBackend::open_with(dir.path(), 100, 500) {
            Err(StorageError::Open { path, reason }) => {
                assert_eq!(path, log);
                assert!(reason.contains("segment 1"), "{reason}");
            }
            r => panic!("opened a damaged segment: {r:?}"),
        }
    }

    /// Retention deletes whole segments below the floor, keeps exactly what it must, carries
    /// latest values out of deleted segments, and holds across a reopen.
    #[test]
    fn retention_deletes_segments_and_keeps_latest_values() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(DIR);
        let segs = || {
            std::fs::read_dir(&log)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".seg")
                })
                .count()
        };
        {
            let mut b = LogBackend::open_with(dir.path(), 100, 1_000).unwrap();
            // "old" is written once, first; the others keep being written.
            b.store(&s("old", 1, 1, b"keep me")).unwrap();
            for i in 0..300 {
                b.store(&s(&format!("k/{}", i % 3), 10 + i, 1, &[1; 20]))
                    .unwrap();
            }
            let before = segs();
            assert!(before > 5);
            assert_eq!(b.prune(None, Some(100), None).unwrap(), 201);
            assert_eq!(b.history_len(), 100);
            assert_eq!(times(&all(&b)), (210..310).collect::<Vec<_>>());
            assert!(segs() < before, "{} segments, {before} before", segs());
            assert_eq!(b.summary().oldest.map(|t| t.time.0), Some(210));
            assert_eq!(b.summary().bytes, 100 * 20);
            // By age: below 250.
            assert_eq!(b.prune(Some(Ntp64(250)), None, None).unwrap(), 40);
            assert_eq!(
                b.latest(&KeyExpr::new("old").unwrap()).unwrap()[0].payload,
                b"keep me"[..]
            );
            // A late sample below the floor is past retention: not stored.
            assert_eq!(b.store_batch(&[s("k/0", 5, 1, b"late")]).unwrap(), 0);
            assert_eq!(b.history_len(), 60);
        }
        let b = LogBackend::open_with(dir.path(), 100, 1_000).unwrap();
        assert_eq!(b.history_len(), 60);
        assert_eq!(times(&all(&b)), (250..310).collect::<Vec<_>>());
        assert_eq!(
            b.latest(&KeyExpr::new("old").unwrap()).unwrap()[0].payload,
            b"keep me"[..]
        );
        assert_eq!(b.latest(&KeyExpr::new("**").unwrap()).unwrap().len(), 4);
        assert_eq!(b.summary().keys, 4);
    }

    /// A retried sample is stored once, whether its first copy is in the active segment, in a
    /// sealed one, or was written before a restart.
    #[test]
    fn retries_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let batch: Vec<StoredSample> = (0..50).map(|i| s("r", 1000 + i, 9, &[2; 50])).collect();
        {
            let mut b = LogBackend::open_with(dir.path(), 100, 1_000).unwrap();
            b.store_batch(&batch).unwrap();
            b.store_batch(&batch[10..20]).unwrap();
            assert_eq!(b.history_len(), 50);
        }
        let mut b = LogBackend::open_with(dir.path(), 100, 1_000).unwrap();
        assert_eq!(b.store_batch(&batch).unwrap(), 0);
        assert_eq!(b.history_len(), 50);
        assert_eq!(all(&b).len(), 50);
    }

    /// A write the disk refuses stores nothing of its batch and leaves what was stored.
    #[test]
    fn a_failed_write_stores_nothing_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = LogBackend::open(dir.path(), 100).unwrap();
        b.store(&s("a", 1, 1, b"one")).unwrap();
        // The active segment's file, made read-only underneath the log.
        let seg = seg_path(&dir.path().join(DIR), 0, "seg");
        b.segs.last_mut().unwrap().file = File::open(&seg).unwrap();
        assert!(matches!(
            b.store_batch(&[s("b", 2, 1, b"two"), s("a", 3, 1, b"three")]),
            Err(StorageError::Io(_))
        ));
        assert_eq!(b.history_len(), 1);
        assert!(b.latest(&KeyExpr::new("b").unwrap()).unwrap().is_empty());
        assert_eq!(
            b.latest(&KeyExpr::new("a").unwrap()).unwrap()[0].payload,
            b"one"[..]
        );
        b.segs.last_mut().unwrap().file = open_rw(&seg).unwrap();
        b.store_batch(&[s("b", 2, 1, b"two")]).unwrap();
        drop(b);
        let b = LogBackend::open(dir.path(), 100).unwrap();
        assert_eq!(times(&all(&b)), [1, 2]);
    }
}
