//! AUTOSAR SecOC-style frame authentication (placeholder, being written).
