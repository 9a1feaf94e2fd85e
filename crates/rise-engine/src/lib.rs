//! rise-engine (being built).
