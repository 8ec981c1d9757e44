//! One module per subcommand.

pub(crate) mod can;
pub(crate) mod demo;
pub(crate) mod derive;
pub(crate) mod roll;
pub(crate) mod she;
