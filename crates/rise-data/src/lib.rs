//! rise-data (being built).
