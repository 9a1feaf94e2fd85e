//! rise-store (being built).
