//! Conversations from stateless requests.
//!
//! A client resends the whole message list with every request. Each message is
//! reduced to a digest of its kind and text (the form the conversation keeps), and a
//! conversation is the list of those digests in order. A request is matched to a
//! conversation by, in order: its key (`/s/{id}/`, `X-Uctx-Session`,
//! `X-OpenWebUI-Chat-Id`, `user`), else the longest prefix of its messages that a
//! conversation already holds (a chain of digests from the system prompt on), else an
//! overlap of its first messages with the tail of a conversation (a client that trims
//! its own history). Only the messages after the match are new; a request that departs
//! from what its conversation holds (an edited or regenerated turn) forks it: a new
//! conversation that takes over the shared start without storing it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::wire::{Kind, Rendered};

pub type Digest = [u8; 32];

fn sha(parts: &[&[u8]]) -> Digest {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// A message's digest: its kind and its text.
pub fn message_digest(r: &Rendered) -> Digest {
    let kind: &[u8] = match r.kind {
        Kind::System => b"system",
        Kind::User => b"user",
        Kind::Assistant => b"assistant",
        Kind::Tool => b"tool",
    };
    sha(&[kind, r.text.as_bytes()])
}

/// The root of a conversation's chain: its system prompt.
pub fn root_digest(system: &str) -> Digest {
    sha(&[b"root", system.as_bytes()])
}

fn chain(prev: &Digest, d: &Digest) -> Digest {
    sha(&[b"chain", prev, d])
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub conv: u64,
    /// The conversation's length the plan was made against.
    pub expected_len: usize,
    /// The request's first message that the conversation does not hold.
    pub record_from: usize,
    /// A new conversation (fork or first request) that takes over the request's first
    /// `adopt` messages without storing them (they are stored in the parent). A
    /// regeneration adopts the whole request, its input included: only the answer is
    /// new.
    pub adopt: usize,
    pub forked_from: Option<u64>,
    pub created: bool,
}

/// What the index keeps of one conversation.
#[derive(Clone, Debug)]
pub struct Entry {
    pub namespace: String,
    pub key: Option<String>,
    pub root: Digest,
    pub msgs: Vec<Digest>,
    /// For each message, the highest pool id of this conversation's own namespace
    /// through it (0 while there is none: adopted messages are stored elsewhere).
    pub ids: Vec<u64>,
    pub forked_from: Option<u64>,
    /// For a fork, how many of its first messages it shares with its parent (the
    /// parent's history through them is the fork's too).
    pub fork_at: usize,
}

/// Every conversation of the server, by key, prefix chain and message.
#[derive(Default)]
pub struct Index {
    entries: HashMap<u64, Entry>,
    by_key: HashMap<String, u64>,
    /// Chain digest of a prefix → (conversation, prefix length).
    chains: HashMap<Digest, (u64, usize)>,
    /// Message digest → (conversation, position), for aligning trimmed histories.
    positions: HashMap<Digest, Vec<(u64, usize)>>,
    next_id: u64,
    /// Distinguishes this process's namespaces from an earlier run's (and from
    /// other servers' on a shared journal).
    epoch: u64,
    /// The high bits of this server's conversation ids: 0 on a journal of its
    /// own, `instance << 32` on a shared one, so servers never allocate one id twice.
    id_prefix: u64,
    /// Changes not yet written to the journal beside the pool.
    journal: Vec<serde_json::Value>,
}

/// The shortest overlap that counts as a trimmed history's match.
const MIN_TAIL_OVERLAP: usize = 2;

impl Index {
    pub fn new() -> Index {
        Index {
            epoch: crate::wire::unix_now(),
            next_id: 1,
            ..Index::default()
        }
    }

    /// An index for one of several servers sharing a journal: `instance`, a
    /// number none of the others holds, makes its ids and namespaces its own.
    pub fn for_instance(instance: u64) -> Index {
        Index {
            epoch: instance,
            next_id: 1,
            id_prefix: (instance & 0xffff_ffff) << 32,
            ..Index::default()
        }
    }

    pub fn get(&self, id: u64) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn entries(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    pub fn len_of(&self, id: u64) -> Option<usize> {
        self.entries.get(&id).map(|e| e.msgs.len())
    }

    fn create(
        &mut self,
        key: Option<&str>,
        root: Digest,
        forked_from: Option<u64>,
        fork_at: usize,
    ) -> u64 {
        let id = self.id_prefix | self.next_id;
        self.next_id += 1;
        let namespace = match key {
            Some(k) if forked_from.is_none() => format!("serve/{k}"),
            Some(k) => format!("serve/{k}/fork-{:x}-{id}", self.epoch),
            None => format!("serve/c-{:x}-{id}", self.epoch),
        };
        self.entries.insert(
            id,
            Entry {
                namespace,
                key: key.map(str::to_string),
                root,
                msgs: Vec::new(),
                ids: Vec::new(),
                forked_from,
                fork_at,
            },
        );
        if let Some(k) = key {
            self.by_key.insert(k.to_string(), id);
        }
        let e = &self.entries[&id];
        self.journal.push(serde_json::json!({
            "op": "new", "id": id, "namespace": e.namespace, "key": e.key,
            "root": hex(&root), "forked_from": forked_from, "fork_at": fork_at,
        }));
        id
    }

    /// Decide where a request with these messages (system prompt apart) goes, creating
    /// the conversation when it is new or a fork.
    pub fn plan(&mut self, key: Option<&str>, root: Digest, req: &[Digest]) -> Planned {
        let n = req.len();
        let extend = |conv: u64, len: usize, from: usize| Planned {
            conv,
            expected_len: len,
            record_from: from,
            adopt: 0,
            forked_from: None,
            created: false,
        };
        let (parent, shared) = if let Some(k) = key {
            match self.by_key.get(k).copied() {
                None => (None, 0),
                Some(c) => {
                    let msgs = &self.entries[&c].msgs;
                    let k_len = msgs.iter().zip(req).take_while(|(a, b)| a == b).count();
                    if k_len == msgs.len() && k_len < n {
                        return extend(c, msgs.len(), k_len);
                    }
                    if let Some(l) = tail_overlap(msgs, req, 1) {
                        return extend(c, msgs.len(), l);
                    }
                    // The key says it is this conversation: a request that shares nothing
                    // with it (a client that sends only its latest messages) goes on with
                    // it; one that departs from it after a shared start (an edit, a
                    // regeneration) forks.
                    if k_len == 0 {
                        return extend(c, msgs.len(), 0);
                    }
                    (Some(c), k_len)
                }
            }
        } else {
            let mut prefixes = Vec::with_capacity(n);
            let mut h = root;
            for d in req {
                h = chain(&h, d);
                prefixes.push(h);
            }
            let found = (1..=n)
                .rev()
                .find_map(|i| self.chains.get(&prefixes[i - 1]).copied());
            match found {
                Some((c, i)) => {
                    let len = self.entries[&c].msgs.len();
                    if i == len && i < n {
                        return extend(c, len, i);
                    }
                    (Some(c), i)
                }
                None => {
                    let best = req.first().and_then(|first| {
                        self.positions
                            .get(first)
                            .into_iter()
                            .flatten()
                            .filter(|(c, _)| self.entries[c].root == root)
                            .filter_map(|(c, _)| {
                                tail_overlap(&self.entries[c].msgs, req, MIN_TAIL_OVERLAP)
                                    .map(|l| (l, *c))
                            })
                            .max()
                    });
                    if let Some((l, c)) = best {
                        return extend(c, self.entries[&c].msgs.len(), l);
                    }
                    (None, 0)
                }
            }
        };
        // A new conversation; a fork takes over the shared start: all but the input
        // after an edit, the whole request (the input too) for a regeneration.
        let adopt = match parent {
            Some(_) => shared.min(n),
            None => 0,
        };
        let id = self.create(key, root, parent, adopt);
        self.append(id, &req[..adopt], &[]);
        Planned {
            conv: id,
            expected_len: adopt,
            record_from: adopt,
            adopt,
            forked_from: parent,
            created: true,
        }
    }

    /// The namespaces whose slices are part of a conversation's history, each with the
    /// last pool id of it that is: its parent through the last message they share,
    /// the parent's parent through the fewer messages of the two forks, and so on.
    pub fn lineage(&self, id: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let Some(mut e) = self.entries.get(&id) else {
            return out;
        };
        let mut shared = e.fork_at;
        let mut seen = std::collections::HashSet::from([id]);
        while let Some(p) = e.forked_from {
            let Some(parent) = self.entries.get(&p) else {
                break;
            };
            if !seen.insert(p) || shared == 0 {
                break;
            }
            let through = parent.ids.get(shared - 1).copied().unwrap_or(0);
            if through > 0 {
                out.push((parent.namespace.clone(), through));
            }
            shared = shared.min(parent.fork_at);
            e = parent;
        }
        out
    }

    /// The highest pool id of the conversation's own namespace so far (0: none).
    pub fn last_id(&self, id: u64) -> u64 {
        self.entries
            .get(&id)
            .and_then(|e| e.ids.last().copied())
            .unwrap_or(0)
    }

    /// The conversation now also holds `more` after its first `at` messages; `ids`
    /// gives, for each, the highest pool id of its own namespace through it (empty:
    /// no new slice, as for adopted messages).
    pub fn append(&mut self, id: u64, more: &[Digest], ids: &[u64]) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if more.is_empty() {
            return;
        }
        let at = e.msgs.len();
        e.msgs.extend_from_slice(more);
        extend_ids(&mut e.ids, more.len(), |i| ids.get(i).copied());
        let added = e.ids[at..].to_vec();
        let (root, msgs) = (e.root, e.msgs.clone());
        self.index_messages(id, root, &msgs, at);
        self.journal.push(serde_json::json!({
            "op": "append", "id": id, "at": at,
            "messages": more.iter().map(hex).collect::<Vec<_>>(),
            "ids": added,
        }));
    }

    /// The changes since the last call, as journal lines.
    pub fn take_journal(&mut self) -> Vec<serde_json::Value> {
        std::mem::take(&mut self.journal)
    }

    fn index_messages(&mut self, id: u64, root: Digest, msgs: &[Digest], from: usize) {
        let mut h = root;
        for (i, d) in msgs.iter().enumerate() {
            h = chain(&h, d);
            if i >= from {
                self.chains.insert(h, (id, i + 1));
                self.positions.entry(*d).or_default().push((id, i));
            }
        }
    }
}

/// Add `n` positions to a conversation's running highest ids, the `i`th new message
/// having written up to `id(i)` (none: nothing new).
fn extend_ids(ids: &mut Vec<u64>, n: usize, id: impl Fn(usize) -> Option<u64>) {
    let mut last = ids.last().copied().unwrap_or(0);
    for i in 0..n {
        last = last.max(id(i).unwrap_or(0));
        ids.push(last);
    }
}

fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Digest> {
    if s.len() != 64 {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(d)
}

impl Index {
    /// The whole index as journal lines (what a compacted journal holds).
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        let mut ids: Vec<&u64> = self.entries.keys().collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let e = &self.entries[id];
            out.push(serde_json::json!({
                "op": "new", "id": id, "namespace": e.namespace, "key": e.key,
                "root": hex(&e.root), "forked_from": e.forked_from, "fork_at": e.fork_at,
            }));
            if !e.msgs.is_empty() {
                out.push(serde_json::json!({
                    "op": "append", "id": id, "at": 0,
                    "messages": e.msgs.iter().map(hex).collect::<Vec<_>>(),
                    "ids": e.ids,
                }));
            }
        }
        out
    }

    /// The index a previous run journaled in `path`, one JSON object a line (empty when
    /// there is none; a line that does not read, as a torn last line after a kill, is
    /// skipped: the journal is derived, and only dedupes resent histories).
    pub fn load(path: &std::path::Path) -> Index {
        let mut ix = Index::new();
        let Ok(text) = std::fs::read_to_string(path) else {
            return ix;
        };
        for line in text.lines() {
            if let Ok(c) = serde_json::from_str::<serde_json::Value>(line) {
                ix.apply(&c);
            }
        }
        ix
    }

    /// Apply one journal line (this server's or another's). Idempotent: a
    /// conversation already known is not created again, and an append applies
    /// only where the conversation ends, so a line read back twice changes
    /// nothing. The conversation whose messages grew, if any.
    pub fn apply(&mut self, c: &serde_json::Value) -> Option<u64> {
        let id = c["id"].as_u64()?;
        match c["op"].as_str() {
            Some("new") => {
                if self.entries.contains_key(&id) {
                    return None;
                }
                let ns = c["namespace"].as_str()?;
                let root = c["root"].as_str().and_then(unhex)?;
                let key = c["key"].as_str().map(str::to_string);
                if let Some(k) = &key {
                    self.by_key.insert(k.clone(), id);
                }
                self.entries.insert(
                    id,
                    Entry {
                        namespace: ns.to_string(),
                        key,
                        root,
                        msgs: Vec::new(),
                        ids: Vec::new(),
                        forked_from: c["forked_from"].as_u64(),
                        fork_at: c["fork_at"].as_u64().unwrap_or(0) as usize,
                    },
                );
                if id & !0xffff_ffff == self.id_prefix {
                    self.next_id = self.next_id.max((id & 0xffff_ffff) + 1);
                }
                None
            }
            Some("append") => {
                let e = self.entries.get_mut(&id)?;
                let at = c["at"].as_u64().unwrap_or(e.msgs.len() as u64) as usize;
                let more: Vec<Digest> = c["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m.as_str().and_then(unhex))
                    .collect::<Option<_>>()?;
                if at != e.msgs.len() || more.is_empty() {
                    return None;
                }
                let ids = c["ids"].as_array();
                extend_ids(&mut e.ids, more.len(), |i| {
                    ids.and_then(|v| v.get(i)).and_then(|x| x.as_u64())
                });
                e.msgs.extend(more);
                let (root, msgs) = (e.root, e.msgs.clone());
                self.index_messages(id, root, &msgs, at);
                Some(id)
            }
            _ => None,
        }
    }
}

/// The longest `l` (at least `min`, less than the request) such that the request's first
/// `l` messages are the conversation's last `l`.
fn tail_overlap(msgs: &[Digest], req: &[Digest], min: usize) -> Option<usize> {
    let max = msgs.len().min(req.len().saturating_sub(1));
    (min.max(1)..=max)
        .rev()
        .find(|&l| msgs[msgs.len() - l..] == req[..l])
}

/// A conversation's live state: its session, opened on first use and closed when idle
/// sessions are too many (it resumes from the pool when the client comes back).
pub struct Live {
    pub session: Option<uctx::session::Session>,
    pub backend: Option<Arc<crate::upstream::ProxyBackend>>,
    pub model: String,
    pub last_used: std::time::Instant,
    pub requests: u64,
    /// Slices paged into the last window.
    pub last_paged: usize,
    /// The session's figures, kept when the session is closed.
    pub stats: uctx::session::SessionStats,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            session: None,
            backend: None,
            model: String::new(),
            last_used: std::time::Instant::now(),
            requests: 0,
            last_paged: 0,
            stats: uctx::session::SessionStats::default(),
        }
    }
}

pub type LiveMap = HashMap<u64, Arc<Mutex<Live>>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Pool ids for `n` messages stored one slice each, after `after`.
    fn ids(after: u64, n: usize) -> Vec<u64> {
        (after + 1..=after + n as u64).collect()
    }

    fn d(s: &str) -> Digest {
        message_digest(&Rendered {
            kind: Kind::User,
            role: uctx::backend::Role::User,
            text: s.to_string(),
        })
    }

    fn ds(v: &[&str]) -> Vec<Digest> {
        v.iter().map(|s| d(s)).collect()
    }

    #[test]
    fn resent_history_extends_and_edits_fork() {
        let mut ix = Index::new();
        let root = root_digest("sys");
        // The parent stores u1 a1 u2 a2 as slices 1 to 4.
        let p = ix.plan(None, root, &ds(&["u1"]));
        assert!(p.created);
        ix.append(p.conv, &ds(&["u1", "a1"]), &ids(0, 2));
        let q = ix.plan(None, root, &ds(&["u1", "a1", "u2"]));
        assert_eq!((q.conv, q.record_from, q.created), (p.conv, 2, false));
        ix.append(q.conv, &ds(&["u2", "a2"]), &ids(2, 2));
        // An edit of u2 forks after a1, taking u1 and a1 over.
        let f = ix.plan(None, root, &ds(&["u1", "a1", "u2-edited"]));
        assert!(f.created);
        assert_eq!(
            (f.forked_from, f.adopt, f.record_from),
            (Some(p.conv), 2, 2)
        );
        // The fork searches its parent through a1 (slice 2), not the edited-away u2.
        let parent_ns = ix.get(p.conv).unwrap().namespace.clone();
        assert_eq!(ix.lineage(f.conv), vec![(parent_ns.clone(), 2)]);
        assert!(ix.lineage(p.conv).is_empty());
        ix.append(f.conv, &ds(&["u2-edited", "a2-edited"]), &ids(4, 2));
        let g = ix.plan(
            None,
            root,
            &ds(&["u1", "a1", "u2-edited", "a2-edited", "u3"]),
        );
        assert_eq!((g.conv, g.created), (f.conv, false));
        ix.append(f.conv, &ds(&["u3", "a3"]), &ids(6, 2));
        // An edit of u3 forks the fork after a2-edited: the fork through slice 6, its
        // parent through a1 still.
        let h = ix.plan(
            None,
            root,
            &ds(&["u1", "a1", "u2-edited", "a2-edited", "u3-edited"]),
        );
        assert_eq!((h.forked_from, h.adopt), (Some(f.conv), 4));
        let fork_ns = ix.get(f.conv).unwrap().namespace.clone();
        assert_eq!(
            ix.lineage(h.conv),
            vec![(fork_ns.clone(), 6), (parent_ns.clone(), 2)]
        );
        // A regeneration (u3 sent again) adopts the whole request, its input too: the
        // fork's history runs through u3 (slice 7), not the answer a3 it replaces.
        let r = ix.plan(
            None,
            root,
            &ds(&["u1", "a1", "u2-edited", "a2-edited", "u3"]),
        );
        assert!(r.created);
        assert_eq!(
            (r.forked_from, r.adopt, r.record_from),
            (Some(f.conv), 5, 5)
        );
        assert_eq!(
            ix.lineage(r.conv),
            vec![(fork_ns, 7), (parent_ns.clone(), 2)]
        );
        // The journal keeps the lineage.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let lines: Vec<String> = ix.snapshot().iter().map(|v| v.to_string()).collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let back = Index::load(&path);
        assert_eq!(back.lineage(h.conv), ix.lineage(h.conv));
        assert_eq!(back.lineage(r.conv), ix.lineage(r.conv));
        // The original branch still extends.
        let o = ix.plan(None, root, &ds(&["u1", "a1", "u2", "a2", "u3"]));
        assert_eq!((o.conv, o.record_from), (p.conv, 4));
        // Another system prompt is another conversation.
        let other = ix.plan(None, root_digest("other"), &ds(&["u1", "a1", "u2"]));
        assert!(other.created && other.forked_from.is_none());
    }

    #[test]
    fn trimmed_history_aligns_on_the_tail() {
        let mut ix = Index::new();
        let root = root_digest("");
        let p = ix.plan(None, root, &ds(&["u1"]));
        ix.append(p.conv, &ds(&["u1", "a1", "u2", "a2"]), &ids(0, 4));
        let t = ix.plan(None, root, &ds(&["u2", "a2", "u3"]));
        assert_eq!((t.conv, t.record_from, t.created), (p.conv, 2, false));
    }

    #[test]
    fn the_journal_rebuilds_the_index_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let root = root_digest("sys");
        let mut ix = Index::new();
        let p = ix.plan(Some("k"), root, &ds(&["u1"]));
        ix.append(p.conv, &ds(&["u1", "a1"]), &ids(0, 2));
        let q = ix.plan(None, root, &ds(&["x1"]));
        ix.append(q.conv, &ds(&["x1", "y1"]), &ids(2, 2));
        let mut text: String = ix.take_journal().iter().map(|v| format!("{v}\n")).collect();
        text.push_str("{\"op\": \"append\", \"id\": 1, \"at\": 2, \"messa");
        std::fs::write(&path, text).unwrap();
        let mut back = Index::load(&path);
        assert_eq!(back.len_of(p.conv), Some(2));
        assert_eq!(back.len_of(q.conv), Some(2));
        let again = back.plan(Some("k"), root, &ds(&["u1", "a1", "u2"]));
        assert_eq!((again.conv, again.record_from), (p.conv, 2));
        let chained = back.plan(None, root, &ds(&["x1", "y1", "x2"]));
        assert_eq!((chained.conv, chained.record_from), (q.conv, 2));
        // New conversations after a restart get ids (and namespaces) of their own.
        let fresh = back.plan(None, root, &ds(&["z"]));
        assert!(fresh.conv > q.conv);
    }

    #[test]
    fn keys_decide_before_content() {
        let mut ix = Index::new();
        let root = root_digest("");
        let a = ix.plan(Some("a"), root, &ds(&["hi"]));
        ix.append(a.conv, &ds(&["hi", "hello"]), &ids(0, 2));
        let b = ix.plan(Some("b"), root, &ds(&["hi"]));
        assert_ne!(a.conv, b.conv);
        assert_eq!(ix.get(a.conv).unwrap().namespace, "serve/a");
        let a2 = ix.plan(Some("a"), root, &ds(&["hi", "hello", "more"]));
        assert_eq!((a2.conv, a2.record_from), (a.conv, 2));
        ix.append(a.conv, &ds(&["more", "ok"]), &ids(2, 2));
        // A client that sends only its latest message goes on with the conversation.
        let latest = ix.plan(Some("a"), root, &ds(&["next"]));
        assert_eq!(
            (latest.conv, latest.record_from, latest.created),
            (a.conv, 0, false)
        );
        // Regenerating an answer after a shared start forks the keyed conversation.
        let r = ix.plan(Some("a"), root, &ds(&["hi", "hello", "more"]));
        assert!(r.created);
        assert_eq!((r.forked_from, r.adopt), (Some(a.conv), 3));
        assert_eq!(ix.lineage(r.conv), vec![("serve/a".to_string(), 3)]);
    }
}
