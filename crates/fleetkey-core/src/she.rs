//! SHE memory update protocol M1-M5 (placeholder, being written).
