//! What a server in front of the model needs from a session: a conversation whose
//! history arrives with each request (stateless clients resend it all) rather than
//! one turn at a time.

use super::{Session, Turn};
use crate::backend::Role;
use crate::memory::Unit;
use crate::slice::Source;
use crate::{Error, Result};

impl Session {
    /// The system prompt the window opens with (the client's own, byte for byte).
    pub fn system_prompt(&self) -> &str {
        &self.cfg.system_prompt
    }

    /// Replace the system prompt: the next window opens with `text`. The server's
    /// cached prefix breaks once, as it would for the client talking to it directly.
    pub fn set_system_prompt(&mut self, text: &str) {
        self.cfg.system_prompt = text.to_string();
    }

    /// Record a tool's result as part of the latest turn (it joins the turn of the call
    /// that asked for it, so the two are dropped from the window together), written to
    /// the pool as a `tool` slice. It appears in the window as a user message.
    pub fn record_tool(&mut self, text: &str) -> Result<u64> {
        if text.trim().is_empty() {
            return Err(Error::invalid("the tool result is empty"));
        }
        let turn = match self.history.last() {
            Some(last) => last.turn,
            None => {
                self.next_turn += 1;
                self.next_turn - 1
            }
        };
        self.memory.write(&[Unit {
            namespace: &self.cfg.namespace,
            source: Source::Tool,
            text,
            turn,
            ext_id: None,
        }])?;
        self.push_history(Role::User, text, turn);
        let played = self.kept_turn(Role::User, text.to_string(), turn);
        self.resident.push(played);
        if let Some(p) = &self.pager {
            p.observe_input(text);
            p.sync();
        }
        Ok(turn)
    }

    /// Take a message into the window without writing it to the pool: history the pool
    /// already holds elsewhere (the shared start of a conversation that forked). A user
    /// message opens a new turn; an assistant message joins the latest one.
    pub fn adopt(&mut self, role: Role, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        let turn = match (role, self.history.last()) {
            (Role::Assistant, Some(last)) if last.role == Role::User => last.turn,
            _ => {
                self.next_turn += 1;
                self.next_turn - 1
            }
        };
        self.push_history(role, text, turn);
        let kept: Turn = self.kept_turn(role, text.to_string(), turn);
        self.resident.push(kept);
    }

    /// The answer reserve: tokens each call may generate at most.
    pub fn answer_tokens(&self) -> usize {
        self.answer_tokens
    }
}
