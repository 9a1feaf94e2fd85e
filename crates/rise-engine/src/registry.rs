//! The set of stage kinds a pipeline may use.
use std::collections::BTreeMap;

use crate::shell::ShellStage;
use crate::stage::Stage;

/// Stage kinds by name. The `rise` CLI builds one with [`Registry::new`] and adds the RISE kinds.
pub struct Registry {
    kinds: BTreeMap<&'static str, Box<dyn Stage>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding the built-in `shell` kind.
    pub fn new() -> Self {
        let mut registry = Registry {
            kinds: BTreeMap::new(),
        };
        registry.register(Box::new(ShellStage));
        registry
    }

    /// Add a kind; a kind of the same name is replaced (so a caller can override a built-in).
    pub fn register(&mut self, stage: Box<dyn Stage>) {
        self.kinds.insert(stage.kind(), stage);
    }

    /// The kind named `kind`.
    pub fn get(&self, kind: &str) -> Option<&dyn Stage> {
        self.kinds.get(kind).map(|s| s.as_ref())
    }

    /// Registered kind names, sorted (for "unknown kind" messages).
    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}
