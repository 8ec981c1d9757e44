//! The lines bulk work hands a caller, made from device records: provisioning lines (key
//! material) and key update lines (SHE M1-M5). A [`LineMaker`] prepares each generation's master
//! once ([`crate::module::BulkDeriver`]) for every device of the batches it makes lines for; the
//! stored scheme's devices derive from their own roots through the module. Made on worker
//! threads beside the store's transactions ([`super::pipeline`]); a line is the same bytes
//! whichever thread made it.

use std::io::Write;

use fleetkey_core::derive::{DeviceKeyInputs, Generation, Revision, Usage};
use fleetkey_core::{Key128, RollSeed};

use super::devices::KeyUpdate;
use super::material::{Authoriser, DeviceKeys, she_uid, she_updates};
use super::scheme::KeySource;
use crate::error::Error;
use crate::model::DeviceRecord;
use crate::module::{BulkDeriver, KeyModule};

/// Makes the lines of device records through one key module.
pub(super) struct LineMaker<'m> {
    module: &'m dyn KeyModule,
    /// The bulk derivers of the generations met so far.
    derivers: Vec<(u32, Box<dyn BulkDeriver + 'm>)>,
}

impl<'m> LineMaker<'m> {
    pub(super) fn new(module: &'m dyn KeyModule) -> Self {
        LineMaker {
            module,
            derivers: Vec::new(),
        }
    }

    fn deriver(&mut self, generation: u32) -> Result<&mut dyn BulkDeriver, Error> {
        let at = match self.derivers.iter().position(|(g, _)| *g == generation) {
            Some(at) => at,
            None => {
                let deriver = self.module.bulk_deriver(Generation(generation))?;
                self.derivers.push((generation, deriver));
                self.derivers.len() - 1
            }
        };
        match self.derivers.get_mut(at) {
            Some((_, d)) => Ok(d.as_mut()),
            None => Err(Error::invalid("generation", "no deriver")),
        }
    }

    /// One key of `r` at `generation` and `revision` into `out`.
    fn derive_into(
        &mut self,
        r: &DeviceRecord,
        generation: u32,
        revision: u32,
        usage: Usage,
        out: &mut [u8],
    ) -> Result<(), Error> {
        let inputs = DeviceKeyInputs {
            usage,
            generation: Generation(generation),
            revision: Revision::new(revision).map_err(|e| Error::invalid("revision", e))?,
            serial: r.serial.as_core(),
        };
        self.deriver(generation)?.derive_into(&inputs, out)?;
        Ok(())
    }

    /// `r`'s keys at `generation` and `revision`.
    fn keys(
        &mut self,
        r: &DeviceRecord,
        generation: u32,
        revision: u32,
    ) -> Result<DeviceKeys, Error> {
        if let KeySource::Root(_) = KeySource::of(r) {
            return DeviceKeys::derive(self.module, r, generation, revision);
        }
        let mut auth = zeroize::Zeroizing::new([0u8; 16]);
        let mut key_update = zeroize::Zeroizing::new([0u8; 16]);
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        self.derive_into(r, generation, revision, Usage::Auth, auth.as_mut_slice())?;
        self.derive_into(
            r,
            generation,
            revision,
            Usage::KeyUpdate,
            key_update.as_mut_slice(),
        )?;
        self.derive_into(
            r,
            generation,
            revision,
            Usage::RollSeed,
            seed.as_mut_slice(),
        )?;
        Ok(DeviceKeys {
            auth: Key128::from_bytes(*auth),
            key_update: Key128::from_bytes(*key_update),
            roll_seed: RollSeed::from_bytes(*seed),
        })
    }

    /// Only `r`'s KEY_UPDATE key at `generation` and `revision`.
    fn key_update_key(
        &mut self,
        r: &DeviceRecord,
        generation: u32,
        revision: u32,
    ) -> Result<Key128, Error> {
        if let KeySource::Root(_) = KeySource::of(r) {
            return DeviceKeys::derive_key_update(self.module, r, generation, revision);
        }
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        self.derive_into(
            r,
            generation,
            revision,
            Usage::KeyUpdate,
            key.as_mut_slice(),
        )?;
        Ok(Key128::from_bytes(*key))
    }

    /// Appends the provisioning lines of devices (their keys at their generation and revision).
    pub(super) fn provisioning(
        &mut self,
        records: &[DeviceRecord],
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        for r in records {
            let keys = self.keys(r, r.generation, r.revision)?;
            push_provisioning_line(buf, r, &keys)?;
        }
        Ok(())
    }

    /// The update that brings a device from `old` to `new`: the SHE updates carrying `new`'s
    /// keys, authorised by `old`'s KEY_UPDATE key.
    pub(super) fn key_update(
        &mut self,
        old: &DeviceRecord,
        new: DeviceRecord,
    ) -> Result<KeyUpdate, Error> {
        let current = self.key_update_key(old, old.generation, old.revision)?;
        let new_keys = self.keys(&new, new.generation, new.revision)?;
        let she = she_updates(
            &new.serial,
            she_uid(&new),
            Authoriser::Current(&current),
            &new_keys,
            new.revision,
        )?;
        Ok(KeyUpdate {
            from: (old.generation, old.revision),
            device: new,
            she,
        })
    }

    /// Appends the key update lines of devices refreshed from `old` to `new`.
    pub(super) fn key_updates(
        &mut self,
        old: &[DeviceRecord],
        new: Vec<DeviceRecord>,
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        for (old, new) in old.iter().zip(new) {
            let update = self.key_update(old, new)?;
            push_update_line(buf, &update)?;
        }
        Ok(())
    }
}

/// One provisioning line, `{"serial":..,"generation":..,"revision":..,"keys":{"auth":..,
/// "key_update":..,"roll_seed":..}}`, hex written straight into the (zeroized later) buffer.
fn push_provisioning_line(
    buf: &mut Vec<u8>,
    r: &DeviceRecord,
    keys: &DeviceKeys,
) -> Result<(), Error> {
    fn push_hex(buf: &mut Vec<u8>, bytes: &[u8]) {
        let mut text = zeroize::Zeroizing::new([0u8; 64]);
        if let Some(t) = text.get_mut(..2 * bytes.len())
            && hex::encode_to_slice(bytes, t).is_ok()
        {
            buf.extend_from_slice(t);
        }
    }
    buf.extend_from_slice(b"{\"serial\":");
    serde_json::to_writer(&mut *buf, &r.serial)
        .map_err(|e| Error::invalid("provisioning output", e))?;
    write!(
        buf,
        ",\"generation\":{},\"revision\":{},\"keys\":{{\"auth\":\"",
        r.generation, r.revision
    )
    .map_err(|source| Error::Io {
        path: "provisioning output".into(),
        source,
    })?;
    push_hex(buf, keys.auth.expose_secret());
    buf.extend_from_slice(b"\",\"key_update\":\"");
    push_hex(buf, keys.key_update.expose_secret());
    buf.extend_from_slice(b"\",\"roll_seed\":\"");
    push_hex(buf, keys.roll_seed.expose_secret());
    buf.extend_from_slice(b"\"}}\n");
    Ok(())
}

/// One key update as a JSON line.
pub(super) fn push_update_line(buf: &mut Vec<u8>, update: &KeyUpdate) -> Result<(), Error> {
    serde_json::to_writer(&mut *buf, update).map_err(|e| Error::invalid("key update line", e))?;
    buf.push(b'\n');
    Ok(())
}
