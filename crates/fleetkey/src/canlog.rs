//! candump log format (placeholder, being written).
