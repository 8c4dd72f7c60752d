//! Forgetting chosen slices on request (an agent's `forget`), as eviction does.

use super::format::Rec;
use super::Pool;
use crate::Result;

impl Pool {
    /// Remove the slices `ids` from the pool, durably (as eviction removes them: gone
    /// from search, reads and totals); returns how many of them were live.
    pub fn forget(&self, ids: &[u64]) -> Result<u64> {
        let _m = self.lock_maint();
        let mut w = self.lock_writer()?;
        let live: Vec<u64> = {
            let s = self.read();
            ids.iter()
                .copied()
                .filter(|&id| s.meta(id).is_some())
                .collect()
        };
        if live.is_empty() {
            return Ok(0);
        }
        self.commit(&mut w, &[Rec::Evict(live.clone())], "forget slices")?;
        self.kick();
        Ok(live.len() as u64)
    }
}
