//! The slice loader: a background thread that keeps a warm cache of slices.
//!
//! While the model streams its answer, the session feeds each piece of output
//! to [`Pager::observe_output`]; the pager thread searches the pool with the
//! latest output and loads the hits (text included) into an LRU cache. When
//! the next input arrives, [`Pager::page_in`] searches once more with the
//! input (on the pager thread, while the session syncs the input to disk) and
//! ranks the cache. A slice chosen for the window that was already in the cache
//! before the input arrived is a *hit*; one that was not is a *miss*. A hit that a
//! prefetch search on the previous answer's output had found, and that the input's
//! own search ranks too, is *prefetch that helped*: a slice prefetch injected that
//! the input would not have asked for does not count.
//!
//! "Before the input arrived" is taken on the pager thread when it takes the input,
//! after every message sent before it (the answer's output included): the figures
//! do not depend on how fast the thread ran.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::lexical::rrf;
use crate::memory::Memory;
use crate::pool::Scope;
use crate::slice::Slice;
use crate::Result;

/// How the pager searches.
#[derive(Clone, Debug)]
pub struct PagerConfig {
    /// Namespaces searched, each its own ranking in the fusion; none searches the
    /// whole (shared) pool.
    pub namespaces: Vec<Searched>,
    /// Slices fetched per search.
    pub k: usize,
    /// Slices kept warm.
    pub capacity: usize,
    /// Output characters accumulated between two prefetch searches.
    pub prefetch_every_chars: usize,
}

impl Default for PagerConfig {
    fn default() -> Self {
        PagerConfig {
            namespaces: Vec::new(),
            k: 8,
            capacity: 256,
            prefetch_every_chars: 240,
        }
    }
}

/// One namespace a pager searches, whole or up to a slice.
#[derive(Clone, Debug, PartialEq)]
pub struct Searched {
    pub namespace: String,
    /// Only slices of this id or lower: a conversation that forked from another
    /// shares that one's history up to the fork (the last message they share, which
    /// may be in the middle of a turn), and nothing after it.
    pub through_id: Option<u64>,
}

impl Searched {
    pub fn whole(namespace: &str) -> Searched {
        Searched {
            namespace: namespace.to_string(),
            through_id: None,
        }
    }

    /// Whether the slice `id` is in what this scope searches.
    pub fn holds(&self, id: u64) -> bool {
        self.through_id.is_none_or(|t| id <= t)
    }

    /// Slices to ask the index for, so that `k` remain after the bound most of the
    /// time.
    pub fn fetch(&self, k: usize) -> usize {
        match self.through_id {
            Some(_) => k * 3,
            None => k,
        }
    }
}

/// Counters the pager reports.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PagerStats {
    /// Slices placed in a window that prefetch had already loaded.
    pub hits: u64,
    /// Slices placed in a window that only the input's own search found.
    pub misses: u64,
    /// Prefetch that helped: of the hits, slices that a search on the previous
    /// answer's streamed output had found before the input arrived, and that the
    /// input's own search also ranks.
    pub predicted: u64,
    /// Searches run by the pager thread.
    pub searches: u64,
    /// Time the pager thread spent on the inputs' own searches (loading included), ms.
    pub input_search_ms: f64,
    /// Time the turns waited for the pager (an input's search and anything queued
    /// before it), ms.
    pub waited_ms: f64,
    /// Search time taken off the turns' critical path: of each input's search, the
    /// part that ran while the turn did something else, ms.
    pub off_path_ms: f64,
    /// Time spent on prefetch searches while answers streamed, ms (off the path by
    /// construction, and no saving by itself).
    pub prefetch_ms: f64,
    /// Slices warm in the cache now.
    pub cached: u64,
    /// Search or load failures (the pager keeps going; the last one is kept).
    pub errors: u64,
    pub last_error: Option<String>,
}

impl PagerStats {
    /// hits / (hits + misses), or `None` before any slice was paged in.
    pub fn hit_rate(&self) -> Option<f64> {
        let n = self.hits + self.misses;
        (n > 0).then(|| self.hits as f64 / n as f64)
    }

    /// Prefetch that helped, as a share of every slice paged in.
    pub fn helped_rate(&self) -> Option<f64> {
        let n = self.hits + self.misses;
        (n > 0).then(|| self.predicted as f64 / n as f64)
    }
}

/// A slice ranked for the next window.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub slice: Slice,
    /// Fused rank score (higher is better).
    pub score: f32,
    /// Whether it was warm in the cache before the input arrived.
    pub prefetched: bool,
    /// Whether a search on the previous answer's streamed output had found it before
    /// the input arrived, and the input's own search ranks it too: prefetch helped.
    pub predicted: bool,
}

struct Entry {
    slice: Slice,
    /// Fused score from output-driven prefetch searches.
    prefetch_score: f32,
    last_touch: u64,
}

#[derive(Default)]
struct State {
    cache: HashMap<u64, Entry>,
    tick: u64,
    stats: PagerStats,
    /// Ranking from the latest input search, best first.
    input_ranking: Vec<(u64, f32)>,
    /// Warm in the cache when the pager thread took the latest input.
    warm_at_input: HashSet<u64>,
    /// Found by a prefetch search since the input before it, when it took the latest.
    prefetched_at_input: HashSet<u64>,
    /// How long the latest input's search took, ms; taken by the next wait.
    last_input_ms: Option<f64>,
}

enum Msg {
    Output(String),
    EndOfOutput,
    Input(String),
    Sync(Sender<()>),
    Forget,
}

/// A handle on the pager thread; dropping it stops the thread.
pub struct Pager {
    tx: Option<Sender<Msg>>,
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

impl Pager {
    pub fn start(memory: Arc<Memory>, config: PagerConfig) -> Pager {
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(Mutex::new(State::default()));
        let worker = Worker {
            memory,
            config,
            state: Arc::clone(&state),
            output: String::new(),
            unsearched: 0,
            output_started: false,
        };
        let thread = std::thread::Builder::new()
            .name("uctx-pager".into())
            .spawn(move || worker.run(rx))
            .ok();
        Pager {
            tx: Some(tx),
            state,
            thread,
        }
    }

    /// Feed a piece of the model's streaming output.
    pub fn observe_output(&self, text: &str) {
        self.send(Msg::Output(text.to_string()));
    }

    /// The answer is complete: search with whatever output is still unsearched.
    pub fn end_of_output(&self) {
        self.send(Msg::EndOfOutput);
    }

    /// Start the search for a new input without waiting for it.
    pub fn observe_input(&self, input: &str) {
        self.send(Msg::Input(input.to_string()));
    }

    /// Drop every warm slice (after the pool was cleared).
    pub fn forget(&self) {
        self.send(Msg::Forget);
    }

    /// Wait until the pager has processed everything sent so far. After an input,
    /// the wait and the part of the input's search that did not have to be waited
    /// for are counted.
    pub fn sync(&self) {
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        if self
            .tx
            .as_ref()
            .is_some_and(|t| t.send(Msg::Sync(tx)).is_ok())
        {
            let _ = rx.recv();
        }
        let waited = started.elapsed().as_secs_f64() * 1e3;
        let mut st = lock(&self.state);
        if let Some(search) = st.last_input_ms.take() {
            st.stats.waited_ms += waited;
            st.stats.off_path_ms += (search - waited).max(0.0);
        }
    }

    /// After [`Pager::observe_input`] and [`Pager::sync`]: candidates for the
    /// window, best first, fusing the input's ranking (weighted 2) with
    /// prefetch scores. What was warm before the input is what the pager thread
    /// found warm when it took the input (after everything sent before it), not
    /// what a caller saw, which would depend on the thread's timing.
    pub fn candidates(&self) -> Vec<Candidate> {
        let st = lock(&self.state);
        let ranked: HashSet<u64> = st.input_ranking.iter().map(|(id, _)| *id).collect();
        let mut fused: HashMap<u64, f32> = HashMap::new();
        for (rank, (id, _)) in st.input_ranking.iter().enumerate() {
            *fused.entry(*id).or_default() += 2.0 * rrf(rank);
        }
        let mut prefetch: Vec<(&u64, &Entry)> = st
            .cache
            .iter()
            .filter(|(_, e)| e.prefetch_score > 0.0)
            .collect();
        prefetch.sort_by(|a, b| {
            b.1.prefetch_score
                .total_cmp(&a.1.prefetch_score)
                .then(a.0.cmp(b.0))
        });
        for (rank, (id, _)) in prefetch.iter().enumerate() {
            *fused.entry(**id).or_default() += rrf(rank);
        }
        let mut out: Vec<Candidate> = fused
            .into_iter()
            .filter_map(|(id, score)| {
                st.cache.get(&id).map(|e| Candidate {
                    slice: e.slice.clone(),
                    score,
                    prefetched: st.warm_at_input.contains(&id),
                    predicted: st.prefetched_at_input.contains(&id) && ranked.contains(&id),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.slice.meta.id.cmp(&b.slice.meta.id))
        });
        out
    }

    /// Count the slices a window actually used.
    pub fn record_use(&self, hits: u64, misses: u64, predicted: u64) {
        let mut st = lock(&self.state);
        st.stats.hits += hits;
        st.stats.misses += misses;
        st.stats.predicted += predicted;
    }

    pub fn stats(&self) -> PagerStats {
        let st = lock(&self.state);
        let mut s = st.stats.clone();
        s.cached = st.cache.len() as u64;
        s
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

struct Worker {
    memory: Arc<Memory>,
    config: PagerConfig,
    state: Arc<Mutex<State>>,
    /// Output of the answer being streamed.
    output: String,
    /// Output characters since the last prefetch search.
    unsearched: usize,
    /// Whether output has arrived since the last input.
    output_started: bool,
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Output(text) => {
                    if !self.output_started {
                        // A new answer: what the previous one predicted is spent.
                        self.output_started = true;
                        for e in lock(&self.state).cache.values_mut() {
                            e.prefetch_score = 0.0;
                        }
                    }
                    self.unsearched += text.chars().count();
                    self.output.push_str(&text);
                    if self.unsearched >= self.config.prefetch_every_chars {
                        self.prefetch();
                    }
                }
                Msg::EndOfOutput => {
                    if self.unsearched > 0 {
                        self.prefetch();
                    }
                    self.output.clear();
                }
                Msg::Input(text) => {
                    self.output_started = false;
                    {
                        let mut st = lock(&self.state);
                        st.warm_at_input = st.cache.keys().copied().collect();
                        st.prefetched_at_input = st
                            .cache
                            .iter()
                            .filter(|(_, e)| e.prefetch_score > 0.0)
                            .map(|(id, _)| *id)
                            .collect();
                    }
                    let started = Instant::now();
                    let ranking = self.search_many(&queries_for(&text));
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    let mut st = lock(&self.state);
                    st.input_ranking = ranking;
                    st.stats.input_search_ms += ms;
                    st.last_input_ms = Some(ms);
                }
                Msg::Sync(done) => {
                    let _ = done.send(());
                }
                Msg::Forget => {
                    let mut st = lock(&self.state);
                    st.cache.clear();
                    st.input_ranking.clear();
                    st.warm_at_input.clear();
                    st.prefetched_at_input.clear();
                }
            }
        }
    }

    /// Search with the tail of the output so far and warm the cache.
    fn prefetch(&mut self) {
        self.unsearched = 0;
        let started = Instant::now();
        let tail = tail_chars(&self.output, self.config.prefetch_every_chars * 2);
        let ranking = self.search_many(&[tail.to_string()]);
        let mut st = lock(&self.state);
        st.stats.prefetch_ms += started.elapsed().as_secs_f64() * 1e3;
        for (rank, (id, _)) in ranking.iter().enumerate() {
            if let Some(e) = st.cache.get_mut(id) {
                e.prefetch_score = e.prefetch_score.max(rrf(rank));
            }
        }
    }

    /// Run each query, fuse the rankings, load every hit into the cache.
    fn search_many(&mut self, queries: &[String]) -> Vec<(u64, f32)> {
        let scopes: Vec<(Scope<'_>, Option<&Searched>)> = if self.config.namespaces.is_empty() {
            vec![(Scope::All, None)]
        } else {
            self.config
                .namespaces
                .iter()
                .map(|s| (Scope::Namespace(s.namespace.as_str()), Some(s)))
                .collect()
        };
        // Fusion by best rank: the top hit of every query (each question of an
        // input is its own query) in every namespace outranks the second hit of
        // any; a slice found by several queries wins ties.
        let mut fused: HashMap<u64, (f32, f32)> = HashMap::new();
        for (q, &(scope, searched)) in queries
            .iter()
            .flat_map(|q| scopes.iter().map(move |s| (q, s)))
        {
            let k = searched.map_or(self.config.k, |s| s.fetch(self.config.k));
            match self.memory.search(q, k, scope) {
                Ok(hits) => {
                    let kept = hits
                        .iter()
                        .filter(|h| searched.is_none_or(|s| s.holds(h.meta.id)))
                        .take(self.config.k);
                    for (rank, hit) in kept.enumerate() {
                        let r = rrf(rank);
                        let e = fused.entry(hit.meta.id).or_default();
                        e.0 = e.0.max(r);
                        e.1 += r;
                    }
                }
                Err(e) => self.note_error(e.to_string()),
            }
        }
        let fused: HashMap<u64, f32> = fused
            .into_iter()
            .map(|(id, (best, sum))| (id, best + sum * 1e-3))
            .collect();
        lock(&self.state).stats.searches += queries.len() as u64;
        let mut ranking: Vec<(u64, f32)> = fused.into_iter().collect();
        ranking.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Err(e) = self.load(&ranking) {
            self.note_error(e.to_string());
        }
        ranking
    }

    /// Make sure every ranked id is warm; evict least recently touched beyond capacity.
    fn load(&self, ranking: &[(u64, f32)]) -> Result<()> {
        let missing: Vec<u64> = {
            let st = lock(&self.state);
            ranking
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !st.cache.contains_key(id))
                .collect()
        };
        let mut loaded = Vec::new();
        for id in missing {
            if let Some(slice) = self.memory.pool().get(id)? {
                loaded.push(slice);
            }
        }
        let mut st = lock(&self.state);
        st.tick += 1;
        let tick = st.tick;
        for slice in loaded {
            st.cache.insert(
                slice.meta.id,
                Entry {
                    slice,
                    prefetch_score: 0.0,
                    last_touch: tick,
                },
            );
        }
        for (id, _) in ranking {
            if let Some(e) = st.cache.get_mut(id) {
                e.last_touch = tick;
            }
        }
        let capacity = self.config.capacity.max(self.config.k);
        if st.cache.len() > capacity {
            let mut by_age: Vec<(u64, u64)> =
                st.cache.iter().map(|(id, e)| (e.last_touch, *id)).collect();
            by_age.sort_unstable();
            let excess = st.cache.len() - capacity;
            for (_, id) in by_age.into_iter().take(excess) {
                st.cache.remove(&id);
            }
        }
        Ok(())
    }

    fn note_error(&self, e: String) {
        let mut st = lock(&self.state);
        st.stats.errors += 1;
        st.stats.last_error = Some(e);
    }
}

/// The queries an input is searched with: the whole text, and each question in it.
pub fn queries_for(input: &str) -> Vec<String> {
    let mut out = vec![input.to_string()];
    let whole = input.trim().len();
    out.extend(
        crate::chunk::sentences(input)
            .into_iter()
            .filter(|s| s.ends_with('?') && s.len() < whole)
            .map(str::to_string),
    );
    out.truncate(9);
    out
}

fn tail_chars(s: &str, n: usize) -> &str {
    match s.char_indices().rev().nth(n.saturating_sub(1)) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_become_extra_queries() {
        let q = queries_for("Set up the proxy. Which gateway port is used? And the region?");
        assert_eq!(q.len(), 3);
        assert_eq!(q[1], "Which gateway port is used?");
        assert_eq!(q[2], "And the region?");
        assert_eq!(queries_for("Just a statement."), vec!["Just a statement."]);
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail_chars("héllo wörld", 5), "wörld");
        assert_eq!(tail_chars("ab", 10), "ab");
    }

    #[test]
    fn hit_rate_is_none_before_use() {
        let mut s = PagerStats::default();
        assert_eq!(s.hit_rate(), None);
        s.hits = 3;
        s.misses = 1;
        assert_eq!(s.hit_rate(), Some(0.75));
    }
}
