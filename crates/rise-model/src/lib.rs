//! rise-model (being built).
