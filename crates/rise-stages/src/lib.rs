//! rise-stages (being built).
