//! The pinned `bpf_link`s every hook shares (XDP on devices, TCX on pod
//! interfaces): opening one an earlier agent pinned, to swap a program
//! into it atomically, and pinning a new one so it keeps serving while no
//! agent runs.

use std::path::Path;

use aya::programs::{
    ProgramError,
    links::{FdLink, PinnedLink},
};

use super::DataplaneError;

/// The link pinned at `pin`, as the hook's link type; the error says why it
/// cannot be used (gone, or of another kind), for the caller to log before
/// it attaches anew.
pub fn open_pinned<L>(pin: &Path) -> Result<L, String>
where
    L: TryFrom<FdLink>,
    L::Error: std::fmt::Display,
{
    let link = PinnedLink::from_pin(pin).map_err(|error| error.to_string())?;
    L::try_from(FdLink::from(link)).map_err(|error| error.to_string())
}

/// Pins `link` (just taken from its program) at `pin`, so the kernel keeps
/// it attached after the agent exits.
pub fn pin<L>(
    link: Result<L, ProgramError>,
    interface: &str,
    pin: &Path,
) -> Result<(), DataplaneError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::error::Error + Send + Sync + 'static,
{
    let pin_error = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::PinLink {
        interface: interface.to_owned(),
        path: pin.to_path_buf(),
        source,
    };
    let link = link.map_err(|error| pin_error(Box::new(error)))?;
    let fd_link = FdLink::try_from(link).map_err(|error| pin_error(Box::new(error)))?;
    let _pinned: PinnedLink = fd_link
        .pin(pin)
        .map_err(|error| pin_error(Box::new(error)))?;
    Ok(())
}
