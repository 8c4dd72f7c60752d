//! A conversation with paged memory: the per-turn loop.
//!
//! Each turn: the pager searches with the input; the window is assembled under
//! the backend's real context size and sent; the answer is streamed through the
//! pager (prefetch); the input and the answer are written to the pool together
//! (durable), so a failed call leaves nothing behind for a retry to duplicate.
//! Whatever no longer fits the window is already in the pool.
//!
//! The window is laid out from the most stable part to the least, so that a
//! server's prefix cache (llama.cpp's `cache_prompt`, Ollama on top of it)
//! reuses everything up to the first change ([`Layout::Stable`]):
//!
//! `[system prompt + pinned facts] [recent turns] [paged memory] [latest input]`
//!
//! The system message is byte-identical from turn to turn (it changes only when
//! a fact is pinned). Everything after it is the *resident stream*, append-only:
//! each turn adds the memory it pages in (in its own message, just before the
//! input, holding only slices the stream does not hold yet), its input and its
//! answer. A slice paged in once stays where it is while the stream keeps it, so
//! the server re-evaluates only what is new. When the stream outgrows the window
//! the oldest turns, with their memory, are dropped in one step, back to half of
//! what memory leaves them, so the prefix breaks once every several turns
//! instead of every turn.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::backend::{Backend, ChatRequest, Message, Role};
use crate::memory::{Memory, Unit};
use crate::pager::{Candidate, Pager, PagerConfig, PagerStats, Searched};
use crate::pool::{Scope, WitnessEvent};
use crate::slice::{Slice, Source};
use crate::{Error, Result};

mod serve;
mod tokens;
pub use tokens::Calibration;

/// The namespace documents are ingested into by default, which sessions also search.
pub const DOCS_NAMESPACE: &str = "docs";

/// Largest window taken from a server's report unless asked for (`--ctx`).
pub const DEFAULT_MAX_WINDOW: usize = 8192;

/// Where each part of the window goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// System prompt and pins, append-only recent turns dropped in steps, paged memory
    /// in its own message, the latest input.
    Stable,
    /// As [`Layout::Stable`], with paged memory at the start of the latest user message
    /// (for chat templates that want strictly alternating roles).
    StableInline,
    /// Paged memory appended to the system message and recent turns sliding by one turn
    /// each turn: what uctx did before, kept so that benchmarks can show the difference.
    Legacy,
}

impl std::str::FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Layout> {
        match s {
            "stable" => Ok(Layout::Stable),
            "stable-inline" => Ok(Layout::StableInline),
            "legacy" => Ok(Layout::Legacy),
            _ => Err(Error::invalid(format!(
                "unknown window layout {s:?}; use stable, stable-inline or legacy"
            ))),
        }
    }
}

/// How a session behaves.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The namespace this session writes to (and reads, unless `shared`).
    pub namespace: String,
    pub system_prompt: String,
    /// Context size to use; `None` asks the backend.
    pub window: Option<usize>,
    /// Cap on the window taken from the server when `window` is `None`: servers
    /// report the model's trained maximum (131072 for many), whose KV cache would
    /// not fit a small GPU; a larger window must be asked for explicitly.
    pub max_window: usize,
    /// Tokens reserved for the answer; `None` takes a quarter of the window, at most 1024.
    pub answer_tokens: Option<usize>,
    /// Share of the free window given to paged-in memory (the rest to recent turns).
    pub memory_share: f32,
    /// Page memory in. Off, the session is a plain sliding window (still written to the pool).
    pub paging: bool,
    /// Search every namespace of the pool, not just this session's.
    pub shared: bool,
    /// Namespaces this session also searches (read only): documents ingested for
    /// it. Default: [`DOCS_NAMESPACE`], where `uctx ingest` writes.
    pub docs: Vec<String>,
    /// Namespaces whose slices, up to the id given, are this conversation's own
    /// earlier history: the conversations it forked from, each through the last slice
    /// of the history they share (an edited or regenerated message departs there).
    /// Searched and paged like its own turns; what the parent said after the fork is
    /// never seen.
    pub lineage: Vec<(String, u64)>,
    /// Slices fetched per search.
    pub k: usize,
    /// Reload the namespace's latest turns from the pool on open.
    pub resume: bool,
    pub temperature: Option<f32>,
    /// Where each part of the window goes.
    pub layout: Layout,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            namespace: "default".into(),
            system_prompt: "You are a helpful assistant. Earlier parts of this conversation that \
                            no longer fit are shown as labelled memory blocks; trust them."
                .into(),
            window: None,
            max_window: DEFAULT_MAX_WINDOW,
            answer_tokens: None,
            memory_share: 0.25,
            paging: true,
            shared: false,
            docs: vec![DOCS_NAMESPACE.to_string()],
            lineage: Vec::new(),
            k: 8,
            resume: false,
            temperature: None,
            layout: Layout::Stable,
        }
    }
}

/// One turn of the conversation, as the session keeps it in memory.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    pub turn: u64,
    /// Raw tokens by the encoder's tokenizer.
    pub tokens: usize,
    /// Slices paged into this message, when it is a paged-memory message of the
    /// resident stream (such a message always holds at least one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paged: Vec<Paged>,
}

impl Turn {
    /// This message is paged memory, not a turn of the conversation.
    pub fn is_memory(&self) -> bool {
        !self.paged.is_empty()
    }
}

/// A slice placed in a window.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Paged {
    pub id: u64,
    pub turn: u64,
    pub source: Source,
    pub score: f32,
    pub prefetched: bool,
    /// Prefetch helped: found by a search on the previous answer's output before the
    /// input arrived, and ranked by the input's own search.
    pub predicted: bool,
    /// Paged in by an earlier turn and still in the window (the prefix the server
    /// has cached), not sent again.
    pub carried: bool,
}

/// What was sent to the model for one turn.
#[derive(Clone, Debug)]
pub struct Window {
    pub messages: Vec<Message>,
    /// Estimated prompt tokens (calibrated to the backend's tokenizer).
    pub est_tokens: usize,
    pub memory: Vec<Paged>,
    /// Earlier turns included verbatim (the latest input excluded).
    pub recent_turns: usize,
    /// Whether the latest input itself was too long and only its tail was sent.
    pub input_cut: bool,
    /// The resident stream after this window is sent (before the answer is added).
    resident: Vec<Turn>,
}

/// A message recorded without calling the model: its turn and its slices' pool ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub turn: u64,
    pub ids: Vec<u64>,
}

/// What one turn did.
#[derive(Clone, Debug)]
pub struct TurnReport {
    pub turn: u64,
    pub answer: String,
    /// The pool ids of the input's slices (none when the input was adopted) and of
    /// the answer's, in order.
    pub input_ids: Vec<u64>,
    pub answer_ids: Vec<u64>,
    pub window: Window,
    pub prompt_tokens_reported: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Paged-in slices whose content showed up in the answer.
    pub used: Vec<u64>,
    /// The prompt's size by the server's own template and tokenizer, when it can say.
    pub prompt_tokens_exact: Option<u64>,
    /// Prompt tokens the server served from its prefix cache, when it says.
    pub cached_tokens: Option<u64>,
    /// The server's prompt evaluation time, ms, when it says.
    pub prompt_eval_ms: Option<f64>,
    /// Time to the first piece of the answer, ms.
    pub ttft_ms: Option<f64>,
    /// The server counted far fewer prompt tokens than were sent: it cut the prompt
    /// without saying so (Ollama does this past `num_ctx`).
    pub truncated: bool,
    /// The server refused the first prompt as too large and a smaller one was sent.
    pub retried: bool,
    /// The user stopped the answer; what streamed before is kept, marked.
    pub interrupted: bool,
}

/// Running totals for `/status`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SessionStats {
    pub turns: u64,
    pub prompt_tokens_est: u64,
    pub prompt_tokens_reported: u64,
    pub completion_tokens: u64,
    pub paged_slices: u64,
    pub used_slices: u64,
    /// Turns whose prompt plus the answer's reserve exceeded the window, by the server's
    /// count (must stay 0).
    pub overflows: u64,
    pub token_scale: f64,
    /// Prompt tokens served from the server's cache, over the turns where it said.
    pub cached_tokens: u64,
    /// Prompt tokens of the turns where the server reported its cache.
    pub cache_reported_tokens: u64,
    /// Sum and count of times to first token, ms.
    pub ttft_ms_total: f64,
    pub ttft_turns: u64,
    /// Sum of the server's prompt evaluation times, ms.
    pub prompt_eval_ms_total: f64,
    /// Turns the server seems to have cut silently (see [`TurnReport::truncated`]).
    pub truncations: u64,
    /// Turns the server refused as too large, sent again smaller.
    pub context_retries: u64,
}

impl SessionStats {
    /// Share of prompt tokens served from the server's cache, when it reported one.
    pub fn cache_reuse(&self) -> Option<f64> {
        (self.cache_reported_tokens > 0)
            .then(|| self.cached_tokens as f64 / self.cache_reported_tokens as f64)
    }

    /// Mean time to first token, ms.
    pub fn ttft_ms_mean(&self) -> Option<f64> {
        (self.ttft_turns > 0).then(|| self.ttft_ms_total / self.ttft_turns as f64)
    }
}

pub struct Session {
    memory: Arc<Memory>,
    backend: Arc<dyn Backend>,
    pager: Option<Pager>,
    cfg: SessionConfig,
    window: usize,
    answer_tokens: usize,
    history: Vec<Turn>,
    next_turn: u64,
    calib: Calibration,
    stats: SessionStats,
    /// Pinned slices of this namespace, in pin order.
    pinned: Vec<Slice>,
    /// What the last prompt held after its system message, as sent.
    resident: Vec<Turn>,
    /// Set to stop the answer in flight (see [`Session::set_interrupt`]).
    interrupt: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// How an answer stopped by the user is marked, in the pool and in later windows.
pub const INTERRUPTED_MARK: &str = "[answer interrupted by the user]";

/// Room kept free beyond the estimate, against tokenizer differences.
fn safety_margin(window: usize) -> usize {
    window / 32 + 16
}

impl Session {
    pub fn open(
        memory: Arc<Memory>,
        backend: Arc<dyn Backend>,
        cfg: SessionConfig,
    ) -> Result<Session> {
        if cfg.namespace.trim().is_empty() {
            return Err(Error::invalid(
                "the namespace is empty; pass --namespace NAME",
            ));
        }
        let window = match cfg.window {
            Some(w) => w,
            None => backend.context_length()?.min(cfg.max_window),
        };
        let answer_tokens = cfg.answer_tokens.unwrap_or((window / 4).min(1024));
        let floor = answer_tokens + safety_margin(window) + 64;
        if window < floor {
            return Err(Error::WindowTooSmall {
                window,
                needed: floor,
                what: "the answer reserve and a minimal prompt".into(),
                fix: "use a larger --ctx, or a smaller answer reserve".into(),
            });
        }
        let pager = cfg.paging.then(|| {
            Pager::start(
                Arc::clone(&memory),
                PagerConfig {
                    namespaces: searched(&cfg),
                    k: cfg.k,
                    ..PagerConfig::default()
                },
            )
        });
        let mut s = Session {
            memory,
            backend,
            pager,
            cfg,
            window,
            answer_tokens,
            history: Vec::new(),
            next_turn: 1,
            calib: Calibration::default(),
            stats: SessionStats::default(),
            pinned: Vec::new(),
            resident: Vec::new(),
            interrupt: None,
        };
        s.load_from_pool()?;
        Ok(s)
    }

    /// Pinned slices, the next turn number, and (with `resume`) the latest turns.
    fn load_from_pool(&mut self) -> Result<()> {
        let pool = self.memory.pool();
        // The slice table holds turns and pins: no record is read to learn them.
        let scope = Scope::Namespace(&self.cfg.namespace);
        self.next_turn = pool.last_turn(&self.cfg.namespace)?.unwrap_or(0) + 1;
        for id in pool.pinned(scope)? {
            if let Some(s) = pool.get(id)? {
                self.pinned.push(s);
            }
        }
        if self.cfg.resume {
            self.history = self.turns_from_pool(Some(self.window * 2))?;
            self.resident = self.history.clone();
        }
        Ok(())
    }

    /// The conversation as the pool holds it, oldest first; with `max_tokens`,
    /// only the latest turns up to about that many tokens.
    fn turns_from_pool(&self, max_tokens: Option<usize>) -> Result<Vec<Turn>> {
        let pool = self.memory.pool();
        let mut turns: Vec<Turn> = Vec::new();
        let mut budget = max_tokens.unwrap_or(usize::MAX);
        // Newest first, reading records only as far back as the budget goes.
        for id in pool
            .ids(Scope::Namespace(&self.cfg.namespace))?
            .into_iter()
            .rev()
        {
            let Some(slice) = pool.get(id)? else {
                continue;
            };
            let (m, text) = (slice.meta, slice.text);
            let role = match m.source {
                Source::User => Role::User,
                Source::Assistant => Role::Assistant,
                _ => continue,
            };
            match turns.last_mut() {
                Some(t) if t.turn == m.turn && t.role == role => {
                    t.text = format!("{}\n\n{}", text, t.text);
                    t.tokens += m.tokens as usize;
                }
                _ => turns.push(Turn {
                    role,
                    text,
                    turn: m.turn,
                    tokens: m.tokens as usize,
                    paged: Vec::new(),
                }),
            }
            budget = budget.saturating_sub(m.tokens as usize);
            if budget == 0 {
                break;
            }
        }
        turns.reverse();
        Ok(turns)
    }

    /// The whole conversation of this namespace, read back from the pool.
    pub fn transcript(&self) -> Result<Vec<Turn>> {
        self.turns_from_pool(None)
    }

    pub fn window_size(&self) -> usize {
        self.window
    }

    pub fn namespace(&self) -> &str {
        &self.cfg.namespace
    }

    pub fn memory(&self) -> &Arc<Memory> {
        &self.memory
    }

    pub fn history(&self) -> &[Turn] {
        &self.history
    }

    pub fn stats(&self) -> SessionStats {
        let mut s = self.stats.clone();
        s.token_scale = self.calib.scale();
        s
    }

    pub fn pager_stats(&self) -> Option<PagerStats> {
        self.pager.as_ref().map(Pager::stats)
    }

    /// Pin a fact: written to the pool, never fades, always in the window.
    pub fn pin(&mut self, text: &str) -> Result<u64> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::invalid("nothing to pin; use /pin TEXT"));
        }
        let ids = self.memory.write(&[Unit {
            namespace: &self.cfg.namespace,
            source: Source::Pinned,
            text,
            turn: 0,
            ext_id: None,
        }])?;
        let events: Vec<WitnessEvent> = ids.iter().map(|&id| WitnessEvent::Pin(id)).collect();
        self.memory.pool().record(&events)?;
        for id in &ids {
            if let Some(s) = self.memory.pool().get(*id)? {
                self.pinned.push(s);
            }
        }
        ids.first()
            .copied()
            .ok_or_else(|| Error::invalid("nothing to pin; use /pin TEXT"))
    }

    /// Search this session's memory and its documents (or the whole pool when shared).
    pub fn recall(&self, query: &str, k: usize) -> Result<Vec<crate::memory::Recalled>> {
        let searched = searched(&self.cfg);
        if searched.is_empty() {
            return self.memory.recall(query, k, Scope::All);
        }
        let mut all = Vec::new();
        for s in &searched {
            let hits = self
                .memory
                .recall(query, s.fetch(k), Scope::Namespace(&s.namespace))?;
            all.extend(
                hits.into_iter()
                    .filter(|r| s.holds(r.slice.meta.turn))
                    .take(k),
            );
        }
        all.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.slice.meta.id.cmp(&b.slice.meta.id))
        });
        all.truncate(k);
        Ok(all)
    }

    /// Forget this session: delete its namespace from the pool and its history.
    pub fn clear(&mut self) -> Result<u64> {
        let n = self.memory.pool().delete_namespace(&self.cfg.namespace)?;
        self.history.clear();
        self.resident.clear();
        self.pinned.clear();
        self.next_turn = 1;
        if let Some(p) = &self.pager {
            p.forget();
        }
        Ok(n)
    }

    /// Run one turn: page in, assemble, stream the answer, write it.
    pub fn turn(&mut self, input: &str, on_text: &mut dyn FnMut(&str)) -> Result<TurnReport> {
        self.turn_as(Source::User, input, on_text)
    }

    /// [`Session::turn`] for an input of `source`: a tool's result (the answer to a
    /// call the model made) joins the turn of that call and is written as a `tool`
    /// slice; anything else opens a turn as the user's input.
    pub fn turn_as(
        &mut self,
        source: Source,
        input: &str,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<TurnReport> {
        self.run_turn(source, input, true, on_text)
    }

    /// [`Session::turn_as`] for an input the pool already holds in a namespace of
    /// [`SessionConfig::lineage`] (a regenerated answer: the request is the parent's
    /// history through its input). Only the answer is written.
    pub fn turn_on_adopted(
        &mut self,
        source: Source,
        input: &str,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<TurnReport> {
        self.run_turn(source, input, false, on_text)
    }

    fn run_turn(
        &mut self,
        source: Source,
        input: &str,
        write_input: bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<TurnReport> {
        if input.trim().is_empty() {
            return Err(Error::invalid("the input is empty"));
        }
        let source = match source {
            Source::Tool => Source::Tool,
            _ => Source::User,
        };
        let next_before = self.next_turn;
        let turn = self.turn_for(source);
        if let Some(p) = &self.pager {
            p.observe_input(input);
        }
        self.push_history(Role::User, input, turn);
        let candidates = match &self.pager {
            Some(p) => {
                p.sync();
                p.candidates()
            }
            None => Vec::new(),
        };
        if let Some(flag) = &self.interrupt {
            flag.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let (window, mut resp, exact, retried) = match self.send(&candidates, on_text) {
            Ok(sent) => sent,
            Err(e) => {
                // Nothing of a turn the model did not answer is kept: a retry is the
                // same turn again, not a second copy of its input.
                self.history.pop();
                self.next_turn = next_before;
                return Err(e);
            }
        };
        // An answer the user stopped is kept as far as it came, and says so.
        let interrupted = resp.done_reason.as_deref() == Some(crate::backend::INTERRUPTED);
        if interrupted {
            if !resp.text.is_empty() {
                resp.text.push_str("\n\n");
            }
            resp.text.push_str(INTERRUPTED_MARK);
        }
        // The input and its answer are written together, in one synced batch: the pool
        // holds whole turns only.
        let mut units = vec![Unit {
            namespace: &self.cfg.namespace,
            source: Source::Assistant,
            text: &resp.text,
            turn,
            ext_id: None,
        }];
        if write_input {
            units.insert(
                0,
                Unit {
                    namespace: &self.cfg.namespace,
                    source,
                    text: input,
                    turn,
                    ext_id: None,
                },
            );
        }
        let mut ids = self.memory.write_each(&units)?;
        let answer_ids = ids.pop().unwrap_or_default();
        let input_ids = ids.pop().unwrap_or_default();
        self.resident = window.resident.clone();
        if !resp.text.is_empty() {
            let answer = self.kept_turn(Role::Assistant, resp.text.clone(), turn);
            self.resident.push(answer);
        }
        self.push_history(Role::Assistant, &resp.text, turn);
        let truncated = self.account(&window, &resp, exact);

        // The witness: what was paged in is relevant again; what the answer used (of
        // everything paged into the window, carried or not) hardens.
        let mut texts: HashMap<u64, String> = candidates
            .iter()
            .map(|c| (c.slice.meta.id, c.slice.text.clone()))
            .collect();
        for p in window.memory.iter().filter(|p| p.carried) {
            if let Some(s) = self.memory.pool().get(p.id)? {
                texts.insert(p.id, s.text);
            }
        }
        let used = used_slices(&window.memory, &texts, &resp.text, input);
        let fresh: Vec<&Paged> = window.memory.iter().filter(|p| !p.carried).collect();
        let mut events: Vec<WitnessEvent> =
            fresh.iter().map(|p| WitnessEvent::Recalled(p.id)).collect();
        events.extend(used.iter().map(|&id| WitnessEvent::Used(id)));
        if !events.is_empty() {
            self.memory.pool().record(&events)?;
        }
        self.stats.paged_slices += fresh.len() as u64;
        self.stats.used_slices += used.len() as u64;
        if let Some(p) = &self.pager {
            let hits = fresh.iter().filter(|m| m.prefetched).count() as u64;
            let predicted = fresh.iter().filter(|m| m.prefetched && m.predicted).count() as u64;
            p.record_use(hits, fresh.len() as u64 - hits, predicted);
        }

        Ok(TurnReport {
            turn,
            cached_tokens: resp.cache_hits(),
            answer: resp.text,
            input_ids,
            answer_ids,
            window,
            prompt_tokens_reported: resp.prompt_tokens,
            completion_tokens: resp.completion_tokens,
            used,
            prompt_tokens_exact: exact.map(|n| n as u64),
            prompt_eval_ms: resp.prompt_eval_ms,
            ttft_ms: resp.ttft_ms,
            truncated,
            retried,
            interrupted,
        })
    }

    /// A flag that stops the answer in flight when set (a Ctrl-C handler sets it): the
    /// backend closes the stream, and the turn keeps its input and what streamed of
    /// the answer, marked with [`INTERRUPTED_MARK`]. Cleared at the start of each turn.
    pub fn set_interrupt(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// Record a turn of the conversation without calling the model: history that
    /// happened elsewhere (an imported transcript, a conversation played back). A user
    /// message opens a new turn; an assistant message joins the latest one.
    pub fn record(&mut self, role: Role, text: &str) -> Result<u64> {
        let source = match role {
            Role::Assistant => Source::Assistant,
            _ => Source::User,
        };
        Ok(self.record_as(source, text)?.turn)
    }

    /// [`Session::record`] for a message of `source` (a tool's result joins the turn
    /// of the call that asked for it, written as a `tool` slice).
    pub fn record_as(&mut self, source: Source, text: &str) -> Result<Recorded> {
        if text.trim().is_empty() {
            return Err(Error::invalid(match source {
                Source::Tool => "the tool result is empty",
                _ => "the message is empty",
            }));
        }
        let next_before = self.next_turn;
        let turn = self.turn_for(source);
        let ids = match self.memory.write(&[Unit {
            namespace: &self.cfg.namespace,
            source,
            text,
            turn,
            ext_id: None,
        }]) {
            Ok(ids) => ids,
            Err(e) => {
                self.next_turn = next_before;
                return Err(e);
            }
        };
        let role = role_of(source);
        self.push_history(role, text, turn);
        let played = self.kept_turn(role, text.to_string(), turn);
        self.resident.push(played);
        if let Some(p) = &self.pager {
            // Wait for its search, so that what is warm does not depend on timing.
            p.observe_input(text);
            p.sync();
        }
        Ok(Recorded { turn, ids })
    }

    /// The turn a new message of `source` belongs to (see [`joins_latest`]), opening
    /// a new one when it starts one.
    fn turn_for(&mut self, source: Source) -> u64 {
        match self.history.last() {
            Some(last) if joins_latest(source, Some(last.role)) => last.turn,
            _ => {
                self.next_turn += 1;
                self.next_turn - 1
            }
        }
    }

    /// Whether slices of `namespace` are this conversation's own turns (its own
    /// namespace, or one it forked from).
    fn is_own_history(&self, namespace: &str) -> bool {
        namespace == self.cfg.namespace || self.cfg.lineage.iter().any(|(ns, _)| ns == namespace)
    }

    /// Assemble the window, check it against the server's own count where the server
    /// can count, and send it; a prompt the server refuses as too large is assembled
    /// again under the size the server reported and sent once more.
    fn send(
        &mut self,
        candidates: &[Candidate],
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(Window, crate::backend::ChatResponse, Option<usize>, bool)> {
        let budget = self.prompt_budget();
        let mut retried = false;
        if !self.calib.observed() {
            // Before the server has counted anything, let it count what this turn would
            // send if everything fit, so the first window is not cut on a guess.
            let mut all = vec![Message::new(Role::System, self.cfg.system_prompt.clone())];
            all.extend(
                self.resident
                    .iter()
                    .map(|t| Message::new(t.role, t.text.clone())),
            );
            if let Some(latest) = self.history.last() {
                all.push(Message::new(latest.role, latest.text.clone()));
            }
            if let Some(n) = self.backend.count_prompt(&all) {
                self.calib.observe(self.raw_tokens(&all), n);
            }
        }
        loop {
            let mut window = self.assemble(candidates)?;
            let mut exact = self.backend.count_prompt(&window.messages);
            // The server's count wins over the estimate: learn from it, and shrink until
            // the prompt fits (each pass raises the scale, so this ends).
            for pass in 0..4 {
                let Some(n) = exact else { break };
                self.calib.observe(self.raw_tokens(&window.messages), n);
                if n <= budget {
                    break;
                }
                if pass > 0 {
                    self.calib.grow(1.1);
                }
                window = self.assemble(candidates)?;
                exact = self.backend.count_prompt(&window.messages);
            }
            let req = ChatRequest {
                messages: window.messages.clone(),
                num_ctx: self.window,
                max_tokens: self.answer_tokens,
                temperature: self.cfg.temperature,
                cancel: self.interrupt.clone(),
            };
            let pager = self.pager.as_ref();
            let mut stream = |t: &str| {
                if let Some(p) = pager {
                    p.observe_output(t);
                }
                on_text(t);
            };
            let resp = self.backend.chat(&req, &mut stream);
            if let Some(p) = &self.pager {
                p.end_of_output();
            }
            match resp {
                Ok(resp) => return Ok((window, resp, exact, retried)),
                Err(crate::backend::BackendError::ContextExceeded { prompt_tokens, .. })
                    if !retried =>
                {
                    retried = true;
                    self.stats.context_retries += 1;
                    // The server's count of what it refused teaches the scale; without
                    // one, assume half as many tokens again as estimated.
                    match prompt_tokens {
                        Some(n) => self
                            .calib
                            .observe(self.raw_tokens(&window.messages), n as usize),
                        None => self.calib.grow(1.5),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Tokens a prompt may take: the window less the answer's reserve and a margin.
    fn prompt_budget(&self) -> usize {
        self.window
            .saturating_sub(self.answer_tokens + safety_margin(self.window))
    }

    /// Fold one turn's server-side figures into the stats; returns whether the server
    /// seems to have cut the prompt silently.
    fn account(
        &mut self,
        window: &Window,
        resp: &crate::backend::ChatResponse,
        exact: Option<usize>,
    ) -> bool {
        self.stats.turns += 1;
        self.stats.prompt_tokens_est += window.est_tokens as u64;
        let sent = exact.unwrap_or(window.est_tokens);
        let mut truncated = false;
        if let Some(reported) = resp.prompt_tokens {
            self.stats.prompt_tokens_reported += reported;
            if reported as usize + self.answer_tokens > self.window {
                self.stats.overflows += 1;
            }
            // A server that counts well under what was sent has cut the prompt (Ollama
            // keeps what fits `num_ctx` and says nothing). Servers that leave cached
            // tokens out of the count say how many were cached, or count them in.
            let counted = reported + resp.cached_tokens.filter(|_| exact.is_none()).unwrap_or(0);
            if sent >= 256 && (counted as f64) < 0.6 * sent as f64 {
                truncated = true;
                self.stats.truncations += 1;
                self.calib.grow(1.25);
            } else if exact.is_none() {
                self.calib
                    .observe(self.raw_tokens(&window.messages), reported as usize);
            }
            if let Some(c) = resp.cache_hits() {
                self.stats.cached_tokens += c.min(reported);
                self.stats.cache_reported_tokens += reported;
            }
        }
        if let Some(t) = resp.ttft_ms {
            self.stats.ttft_ms_total += t;
            self.stats.ttft_turns += 1;
        }
        self.stats.prompt_eval_ms_total += resp.prompt_eval_ms.unwrap_or(0.0);
        self.stats.completion_tokens += resp.completion_tokens.unwrap_or(0);
        truncated
    }

    fn push_history(&mut self, role: Role, text: &str, turn: u64) {
        let kept = self.kept_turn(role, text.to_string(), turn);
        self.history.push(kept);
        // Older turns live in the pool; keep a few windows' worth in memory.
        let mut total = 0;
        let keep_from = self
            .history
            .iter()
            .rposition(|t| {
                total += t.tokens;
                total > self.window * 4
            })
            .map_or(0, |i| i + 1)
            .min(self.history.len() - 1);
        if keep_from > 0 {
            self.history.drain(..keep_from);
        }
    }

    /// Raw (uncalibrated) token count of a prompt, with per-message overhead.
    fn raw_tokens(&self, messages: &[Message]) -> usize {
        messages
            .iter()
            .map(|m| self.memory.count_tokens(&m.content) + tokens::MESSAGE_OVERHEAD)
            .sum()
    }

    /// [`Session::est`] of a kept turn, from the count taken when it was kept.
    fn est_turn(&self, turn: &Turn) -> usize {
        self.calib.estimate(turn.tokens + tokens::MESSAGE_OVERHEAD)
    }

    fn est(&self, text: &str) -> usize {
        self.calib
            .estimate(self.memory.count_tokens(text) + tokens::MESSAGE_OVERHEAD)
    }

    /// Build the window for the latest input (the last entry of the history).
    fn assemble(&self, candidates: &[Candidate]) -> Result<Window> {
        let budget = self.prompt_budget();
        let mut system = self.cfg.system_prompt.clone();
        if !self.pinned.is_empty() {
            system.push_str("\n\nPinned facts:");
            for p in &self.pinned {
                system.push_str("\n- ");
                system.push_str(&p.text);
            }
        }
        let fixed = self.est(&system);
        if fixed > budget {
            return Err(Error::WindowTooSmall {
                window: self.window,
                needed: fixed + self.answer_tokens,
                what: "the system prompt and pinned facts".into(),
                fix: "unpin facts (start a new namespace) or use a model with a larger context (--ctx)"
                    .into(),
            });
        }
        let mut free = budget - fixed;

        // The latest input always goes in; if it alone is too long, its tail goes in
        // and the rest is in the pool (written this turn), said so in the window.
        let latest = self
            .history
            .last()
            .ok_or_else(|| Error::invalid("no input to answer"))?;
        let (latest_text, input_cut) = self.fit_input(latest, free / 2 + free / 4)?;
        free -= self.est(&latest_text).min(free);
        let memory_cap = if self.pager.is_some() {
            (free as f32 * self.cfg.memory_share) as usize
        } else {
            0
        };
        let focus = Focus::new(&latest.text);

        if self.cfg.layout == Layout::Legacy {
            // Recent turns slide by one turn each turn; memory joins the system message.
            let earlier = &self.history[..self.history.len() - 1];
            let first = sliding_start(earlier, free - memory_cap, |t| self.est_turn(t));
            let used: usize = earlier[first..].iter().map(|t| self.est_turn(t)).sum();
            let in_window: HashSet<u64> = earlier[first..]
                .iter()
                .map(|t| t.turn)
                .chain([latest.turn])
                .collect();
            let chosen = self.page_in(candidates, &in_window, &HashSet::new(), free - used, &focus);
            if let Some(mem) = memory_message(&chosen) {
                system = format!("{system}\n\n{mem}");
            }
            let mut messages = vec![Message::new(Role::System, system)];
            messages.extend(
                earlier[first..]
                    .iter()
                    .map(|t| Message::new(t.role, t.text.clone())),
            );
            messages.push(Message::new(Role::User, latest_text));
            return Ok(self.window_of(
                messages,
                paged_of(&chosen),
                earlier.len() - first,
                input_cut,
                Vec::new(),
            ));
        }

        // The resident stream: what the last prompt held after its system message, as
        // it was sent: turns, and the memory paged in before each input. When it and this
        // turn's memory no longer fit, the oldest turns (with their memory) go in one
        // step, down to half of what memory leaves them.
        let resident = &self.resident;
        let mut used: usize = resident.iter().map(|r| self.est_turn(r)).sum();
        // Memory in the window, carried and new together, stays within its share; a
        // quarter of it is always free for what this input needs that is not there yet.
        let new_cap = |kept: &[Turn]| {
            let carried: usize = kept
                .iter()
                .filter(|t| t.is_memory())
                .map(|t| self.est_turn(t))
                .sum();
            memory_cap.saturating_sub(carried).max(memory_cap / 4)
        };
        let mut first = 0;
        if used + new_cap(resident) > free {
            let target = free.saturating_sub(memory_cap) / 2;
            while first < resident.len() && used > target {
                let turn = resident[first].turn;
                while first < resident.len() && resident[first].turn == turn {
                    used -= self.est_turn(&resident[first]);
                    first += 1;
                }
            }
        }
        let kept = &resident[first..];
        let in_window: HashSet<u64> = kept.iter().map(|r| r.turn).chain([latest.turn]).collect();
        // Memory already in the stream stays where it is (the server has it cached);
        // only what is not there yet is paged in, after everything that does not change.
        let carried: Vec<Paged> = kept
            .iter()
            .flat_map(|t| t.paged.iter())
            .map(|p| Paged {
                carried: true,
                ..p.clone()
            })
            .collect();
        let carried_ids: HashSet<u64> = carried.iter().map(|p| p.id).collect();
        let chosen = self.page_in(
            candidates,
            &in_window,
            &carried_ids,
            new_cap(kept).min(free.saturating_sub(used)),
            &focus,
        );
        let paged = paged_of(&chosen);
        let mut next: Vec<Turn> = kept.to_vec();
        if let Some(mem) = memory_message(&chosen) {
            let mut block = self.kept_turn(Role::User, mem, latest.turn);
            block.paged = paged.clone();
            next.push(block);
        }
        next.push(self.kept_turn(Role::User, latest_text, latest.turn));
        let mut messages = vec![Message::new(Role::System, system)];
        messages.extend(self.render(&next));
        let recent_turns = kept.iter().filter(|t| !t.is_memory()).count();
        let mut memory = carried;
        memory.extend(paged);
        Ok(self.window_of(messages, memory, recent_turns, input_cut, next))
    }

    /// The messages of a resident stream. A memory message goes in its own message, or
    /// (with [`Layout::StableInline`]) at the start of the user message after it.
    fn render(&self, stream: &[Turn]) -> Vec<Message> {
        let inline = self.cfg.layout == Layout::StableInline;
        let mut messages: Vec<Message> = Vec::with_capacity(stream.len());
        let mut pending: Option<&str> = None;
        for t in stream {
            if t.is_memory() && inline {
                pending = Some(&t.text);
                continue;
            }
            let text = match pending.take() {
                Some(mem) if t.role == Role::User => format!("{mem}\n\n{}", t.text),
                Some(mem) => {
                    messages.push(Message::new(Role::User, mem.to_string()));
                    t.text.clone()
                }
                None => t.text.clone(),
            };
            messages.push(Message::new(t.role, text));
        }
        if let Some(mem) = pending {
            messages.push(Message::new(Role::User, mem.to_string()));
        }
        messages
    }

    /// A turn as it is kept, with its raw token count.
    fn kept_turn(&self, role: Role, text: String, turn: u64) -> Turn {
        let tokens = self.memory.count_tokens(&text);
        Turn {
            role,
            text,
            turn,
            tokens,
            paged: Vec::new(),
        }
    }

    /// The candidates to page in, best first, within `budget` tokens: none from a turn
    /// already in the window verbatim (`in_window`) or already paged in (`carried`), and
    /// an excerpt of the sentences that bear on the input for a slice too big for its share.
    fn page_in<'c>(
        &self,
        candidates: &'c [Candidate],
        in_window: &HashSet<u64>,
        carried: &HashSet<u64>,
        budget: usize,
        focus: &Focus,
    ) -> Vec<(&'c Candidate, String)> {
        let mut free = budget;
        let per_slice_cap = (budget / 3).max(48);
        let mut chosen: Vec<(&Candidate, String)> = Vec::new();
        for c in candidates {
            let m = &c.slice.meta;
            if self.is_own_history(&m.namespace) && in_window.contains(&m.turn) && m.turn > 0 {
                continue;
            }
            if m.pinned || carried.contains(&m.id) {
                continue;
            }
            let mut block = memory_block(&c.slice, &c.slice.text);
            let mut t = self.calib.estimate(self.memory.count_tokens(&block) + 1);
            if t > per_slice_cap {
                let label = self
                    .calib
                    .estimate(self.memory.count_tokens(&memory_block(&c.slice, "")) + 1);
                let count = |s: &str| self.calib.estimate(self.memory.count_tokens(s) + 1);
                let text = excerpt(
                    &c.slice.text,
                    focus,
                    per_slice_cap.saturating_sub(label),
                    &count,
                );
                if text.is_empty() {
                    continue;
                }
                block = memory_block(&c.slice, &text);
                t = self.calib.estimate(self.memory.count_tokens(&block) + 1);
            }
            if t > free {
                continue;
            }
            free -= t;
            chosen.push((c, block));
        }
        chosen.sort_by_key(|(c, _)| c.slice.meta.id);
        chosen
    }

    fn window_of(
        &self,
        messages: Vec<Message>,
        memory: Vec<Paged>,
        recent_turns: usize,
        input_cut: bool,
        resident: Vec<Turn>,
    ) -> Window {
        let est_tokens = messages.iter().map(|m| self.est(&m.content)).sum();
        Window {
            messages,
            est_tokens,
            memory,
            recent_turns,
            input_cut,
            resident,
        }
    }

    /// The latest input, or its tail when it alone exceeds `limit` tokens.
    fn fit_input(&self, latest: &Turn, limit: usize) -> Result<(String, bool)> {
        if self.est_turn(latest) <= limit {
            return Ok((latest.text.clone(), false));
        }
        let count = |s: &str| self.memory.count_tokens(s);
        // Pieces small enough that a few fit the limit, however coarse the scale.
        let raw_limit = (limit as f64 / self.calib.scale()) as usize;
        let piece_tokens = self.memory.slice_tokens().min(raw_limit / 4).max(16);
        let pieces = crate::chunk::split(&latest.text, piece_tokens, &count);
        let mut kept: Vec<&str> = Vec::new();
        let mut used = self.est("[The first part of this message is in memory.]");
        for p in pieces.iter().rev() {
            let t = self.calib.estimate(count(p) + 1);
            if used + t > limit {
                break;
            }
            used += t;
            kept.push(p);
        }
        if kept.is_empty() {
            return Err(Error::WindowTooSmall {
                window: self.window,
                needed: self.est_turn(latest),
                what: "the latest input".into(),
                fix: "use a model with a larger context (--ctx)".into(),
            });
        }
        kept.reverse();
        let skipped = pieces.len() - kept.len();
        Ok((
            format!(
                "[The first {skipped} part(s) of this message are in memory (turn {}).]\n\n{}",
                latest.turn,
                kept.join("\n\n")
            ),
            true,
        ))
    }
}

/// The namespaces a session searches: its own, its lineage's (each through the
/// last slice it shares) and its documents'; none (the whole pool) when it is shared.
fn searched(cfg: &SessionConfig) -> Vec<Searched> {
    if cfg.shared {
        return Vec::new();
    }
    let mut out = vec![Searched::whole(&cfg.namespace)];
    for (ns, id) in &cfg.lineage {
        if !ns.is_empty() && out.iter().all(|s| &s.namespace != ns) {
            out.push(Searched {
                namespace: ns.clone(),
                through_id: Some(*id),
            });
        }
    }
    for d in &cfg.docs {
        if !d.is_empty() && out.iter().all(|s| &s.namespace != d) {
            out.push(Searched::whole(d));
        }
    }
    out
}

/// Whether a message of `source` joins the latest turn (whose last message had the
/// role `last`) rather than opening one: an answer joins the user message before it;
/// a tool's result joins the turn of the call that asked for it; anything else opens
/// a turn.
fn joins_latest(source: Source, last: Option<Role>) -> bool {
    match source {
        Source::Assistant => last == Some(Role::User),
        Source::Tool => last.is_some(),
        _ => false,
    }
}

/// The role a message of `source` has in the window (a tool's result is shown as a
/// user message: the backends' message list has no tool role).
fn role_of(source: Source) -> Role {
    match source {
        Source::Assistant => Role::Assistant,
        _ => Role::User,
    }
}

/// The first line of the paged-memory message.
pub const MEMORY_HEADER: &str =
    "Memory paged in from earlier in this conversation (each block says where it came from):";

/// The first recent turn when turns slide: as many of the latest as fit `budget`.
fn sliding_start(earlier: &[Turn], budget: usize, est: impl Fn(&Turn) -> usize) -> usize {
    let mut free = budget;
    let mut first = earlier.len();
    while first > 0 {
        let t = est(&earlier[first - 1]);
        if t > free {
            break;
        }
        free -= t;
        first -= 1;
    }
    first
}

/// Where each chosen candidate came from.
fn paged_of(chosen: &[(&Candidate, String)]) -> Vec<Paged> {
    chosen
        .iter()
        .map(|(c, _)| Paged {
            id: c.slice.meta.id,
            turn: c.slice.meta.turn,
            source: c.slice.meta.source,
            score: c.score,
            prefetched: c.prefetched,
            predicted: c.predicted,
            carried: false,
        })
        .collect()
}

/// The paged-memory message for `chosen`, if anything was chosen.
fn memory_message(chosen: &[(&Candidate, String)]) -> Option<String> {
    (!chosen.is_empty()).then(|| {
        let mut text = String::from(MEMORY_HEADER);
        for (_, block) in chosen {
            text.push('\n');
            text.push_str(block);
        }
        text
    })
}

/// How a paged-in slice's label opens: `[memory 123 · turn 14 · user] `.
pub const MEMORY_LABEL: &str = "[memory ";

/// A paged-in slice as the model sees it: `[memory 123 · turn 14 · user] text`,
/// where `text` is the slice's text or an excerpt of it.
pub fn memory_block(slice: &Slice, text: &str) -> String {
    let m = &slice.meta;
    let place = match (&m.ext_id, m.turn) {
        (Some(id), _) => id.clone(),
        (None, 0) => m.namespace.clone(),
        (None, t) => format!("turn {t}"),
    };
    format!(
        "{MEMORY_LABEL}{} · {} · {}] {}",
        m.id, place, m.source, text
    )
}

/// A message's text in pieces, with the labels of [`memory_block`] cut out: they
/// are not part of what was said.
pub fn without_memory_labels(content: &str) -> Vec<&str> {
    let mut parts = content.split(MEMORY_LABEL);
    let mut out: Vec<&str> = parts.next().into_iter().collect();
    for part in parts {
        match part.find(']') {
            Some(close) => out.push(&part[close + 1..]),
            None => out.push(part),
        }
    }
    out
}

/// What an excerpt is cut for: the input's content words and its own sentences.
struct Focus {
    terms: HashSet<String>,
    sentences: HashSet<String>,
}

impl Focus {
    fn new(input: &str) -> Focus {
        let mut terms = HashSet::new();
        crate::lexical::for_each_term(input, |t| {
            if t.chars().count() >= 3 && !crate::lexical::is_stopword(t) {
                terms.insert(t.to_string());
            }
        });
        let sentences = crate::chunk::sentences(input)
            .into_iter()
            .map(normalize_sentence)
            .collect();
        Focus { terms, sentences }
    }

    /// Distinct focus terms in `sentence`.
    fn score(&self, sentence: &str) -> usize {
        let mut seen = HashSet::new();
        crate::lexical::for_each_term(sentence, |t| {
            if self.terms.contains(t) {
                seen.insert(t.to_string());
            }
        });
        seen.len()
    }
}

fn normalize_sentence(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The sentences of `text` that bear on the focus, best first until `cap`
/// tokens, shown in their original order and joined by " … ". Sentences the
/// input already holds verbatim are left out (they add nothing); with no
/// bearing sentence, the excerpt is empty.
fn excerpt(text: &str, focus: &Focus, cap: usize, count: &dyn Fn(&str) -> usize) -> String {
    let sentences = crate::chunk::sentences(text);
    let mut ranked: Vec<(usize, usize)> = sentences
        .iter()
        .enumerate()
        .filter(|(_, s)| !focus.sentences.contains(&normalize_sentence(s)))
        .map(|(i, s)| (focus.score(s), i))
        .filter(|(score, _)| *score > 0)
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen = Vec::new();
    let mut used = 0;
    for (_, i) in ranked {
        let t = count(sentences[i]);
        if used + t <= cap {
            used += t;
            chosen.push(i);
        }
    }
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|i| sentences[i])
        .collect::<Vec<_>>()
        .join(" … ")
}

/// Paged-in slices (their texts in `texts`) whose distinctive words appear in the
/// answer but not in the input.
fn used_slices(
    paged: &[Paged],
    texts: &HashMap<u64, String>,
    answer: &str,
    input: &str,
) -> Vec<u64> {
    let answer_words = distinctive_words(answer);
    let input_words = distinctive_words(input);
    paged
        .iter()
        .filter(|p| {
            texts.get(&p.id).is_some_and(|text| {
                distinctive_words(text)
                    .iter()
                    .any(|w| answer_words.contains(w) && !input_words.contains(w))
            })
        })
        .map(|p| p.id)
        .collect()
}

/// Words that identify content: containing a digit, or long and not common.
fn distinctive_words(text: &str) -> HashSet<String> {
    text.split(|c: char| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')))
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| {
            let has_digit = w.chars().any(|c| c.is_ascii_digit());
            (has_digit && !w.is_empty()) || w.chars().count() >= 8
        })
        .collect()
}

/// Drive an autonomous task: the model works step by step until it says DONE.
pub fn run_task(
    session: &mut Session,
    task: &str,
    max_steps: usize,
    on_text: &mut dyn FnMut(&str),
    on_step: &mut dyn FnMut(usize, &TurnReport),
) -> Result<(usize, bool)> {
    let mut input = format!(
        "Task: {task}\n\nWork through this task one step at a time. In each reply, do the next \
         step and say briefly what you did. When the whole task is complete, end your reply \
         with a line that says DONE."
    );
    for step in 1..=max_steps {
        let report = session.turn(&input, on_text)?;
        let done = report
            .answer
            .lines()
            .any(|l| l.trim().trim_matches(|c: char| !c.is_alphanumeric()) == "DONE");
        on_step(step, &report);
        if done {
            return Ok((step, true));
        }
        input = format!(
            "Continue with the next step of the task (step {} of at most {max_steps}). When \
             the task is complete, end your reply with a line that says DONE.",
            step + 1
        );
    }
    Ok((max_steps, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinctive_words_pick_values() {
        let w = distinctive_words("The gateway port is 8443, region eu-west-3; bootstrap.");
        assert!(w.contains("8443"));
        assert!(w.contains("eu-west-3"));
        assert!(w.contains("bootstrap"));
        assert!(!w.contains("the"));
        assert!(!w.contains("gateway"));
    }
}
