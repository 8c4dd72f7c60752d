//! What a server in front of the model needs from a session: a conversation whose
//! history arrives with each request (stateless clients resend it all) rather than
//! one turn at a time.

use super::{Session, Turn};
use crate::slice::Source;

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

    /// Take a message into the window without writing it to the pool: history the pool
    /// already holds elsewhere (the shared start of a conversation that forked, in the
    /// namespaces of [`SessionConfig::lineage`](super::SessionConfig::lineage)). Turns
    /// are numbered as [`Session::record_as`] numbers them.
    pub fn adopt(&mut self, source: Source, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        let turn = self.turn_for(source);
        let role = super::role_of(source);
        self.push_history(role, text, turn);
        let kept: Turn = self.kept_turn(role, text.to_string(), turn);
        self.resident.push(kept);
    }

    /// The answer reserve: tokens each call may generate at most.
    pub fn answer_tokens(&self) -> usize {
        self.answer_tokens
    }
}
