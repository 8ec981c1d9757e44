//! The software key module (placeholder, being written).
