//! The whole network; see the scenario.
