//! The lines bulk work hands a caller, made from device records: provisioning lines (key
//! material) and key update lines (SHE M1-M5). A [`LineMaker`] prepares each generation's master
//! once ([`crate::module::BulkDeriver`]) for every device of the batches it makes lines for; the
//! stored scheme's devices derive from their own roots through the module. Made on worker
//! threads beside the store's transactions ([`super::pipeline`]); a line is the same bytes
//! whichever thread made it.

use std::io::Write;

use fleetkey_core::derive::{DeviceKeyInputs, Generation, Revision, Usage};
use fleetkey_core::{Key128, RollSeed};

#[cfg(test)]
use super::devices::KeyUpdate;
#[cfg(test)]
use super::material::SheUpdate;
use super::material::{Authoriser, DeviceKeys, SheMessages, she_messages, she_uid};
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

    /// The SHE updates that bring a device from `old` to `new`: `new`'s keys, authorised by
    /// `old`'s KEY_UPDATE key.
    fn she(&mut self, old: &DeviceRecord, new: &DeviceRecord) -> Result<Vec<SheMessages>, Error> {
        let current = self.key_update_key(old, old.generation, old.revision)?;
        let new_keys = self.keys(new, new.generation, new.revision)?;
        she_messages(
            &new.serial,
            she_uid(new),
            Authoriser::Current(&current),
            &new_keys,
            new.revision,
        )
    }

    /// The update that brings a device from `old` to `new`.
    #[cfg(test)]
    fn key_update(&mut self, old: &DeviceRecord, new: DeviceRecord) -> Result<KeyUpdate, Error> {
        let she = self.she(old, &new)?;
        Ok(KeyUpdate {
            from: (old.generation, old.revision),
            device: new,
            she: she.iter().map(SheUpdate::from).collect(),
        })
    }

    /// Appends the key update line of a device refreshed from `old` to `new`: the JSON of its
    /// [`KeyUpdate`](super::devices::KeyUpdate), byte for byte, with the messages' hex written straight into the line.
    pub(super) fn key_update_line(
        &mut self,
        old: &DeviceRecord,
        new: &DeviceRecord,
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let she = self.she(old, new)?;
        push_key_update_line(buf, old, new, &she)
    }

    /// Appends the key update lines of devices refreshed from `old` to `new`.
    pub(super) fn key_updates(
        &mut self,
        old: &[DeviceRecord],
        new: &[DeviceRecord],
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        for (old, new) in old.iter().zip(new) {
            self.key_update_line(old, new, buf)?;
        }
        Ok(())
    }
}

/// The JSON line of a [`KeyUpdate`](super::devices::KeyUpdate) (`{"device":..,"from":[g,r],"she":[{"slot":..,
/// "auth_slot":..,"counter":..,"m1":..,..,"m5":..},..]}`), as serde writes it: the record
/// through serde, the messages as hex written into the line without a `String` each.
fn push_key_update_line(
    buf: &mut Vec<u8>,
    old: &DeviceRecord,
    new: &DeviceRecord,
    she: &[SheMessages],
) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: "key update line".into(),
        source,
    };
    buf.extend_from_slice(b"{\"device\":");
    serde_json::to_writer(&mut *buf, new).map_err(|e| Error::invalid("key update line", e))?;
    write!(
        buf,
        ",\"from\":[{},{}],\"she\":[",
        old.generation, old.revision
    )
    .map_err(io)?;
    for (i, u) in she.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write!(
            buf,
            "{{\"slot\":\"{}\",\"auth_slot\":\"{}\",\"counter\":{}",
            u.slot.name(),
            u.auth_slot.name(),
            u.counter.get()
        )
        .map_err(io)?;
        let m = &u.m;
        for (name, bytes) in [
            ("m1", &m.m1.to_bytes()[..]),
            ("m2", &m.m2.to_bytes()[..]),
            ("m3", &m.m3.to_bytes()[..]),
            ("m4", &m.m4.to_bytes()[..]),
            ("m5", &m.m5.to_bytes()[..]),
        ] {
            let mut hex = [0u8; 64];
            let hex = hex
                .get_mut(..2 * bytes.len())
                .ok_or_else(|| Error::invalid("key update line", "a message over 32 bytes"))?;
            hex::encode_to_slice(bytes, hex).map_err(|e| Error::invalid("key update line", e))?;
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b"\":\"");
            buf.extend_from_slice(hex);
            buf.push(b'"');
        }
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}\n");
    Ok(())
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

/// One key update as a JSON line, through serde (what [`push_key_update_line`] is held to).
#[cfg(test)]
fn push_update_line(buf: &mut Vec<u8>, update: &KeyUpdate) -> Result<(), Error> {
    serde_json::to_writer(&mut *buf, update).map_err(|e| Error::invalid("key update line", e))?;
    buf.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::State;
    use crate::model::{Change, DeviceSerial, WrappedKey};
    use crate::module::soft::{SoftModule, WorkFactor};

    fn device(serial: &str, uid: bool, labels: &[&str], root: Option<WrappedKey>) -> DeviceRecord {
        DeviceRecord {
            serial: DeviceSerial::parse(serial).expect("serial"),
            she_uid: uid.then_some([0x5a; 15]),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            generation: 1,
            revision: 6,
            state: State::Active,
            changed: Change {
                at: 1_700_000_000_123,
                actor: "op \"quoted\" \u{e9}".into(),
                reason: "tab\there".into(),
            },
            wrapped_root: root,
            created_at: 1_690_000_000_000,
        }
    }

    /// The line written straight is serde's JSON of the same [`KeyUpdate`](super::devices::KeyUpdate), byte for byte: for
    /// both schemes, with and without a SHE UID, labels or characters JSON escapes.
    #[test]
    fn a_key_update_line_is_the_json_of_its_key_update() {
        let dir = tempfile::tempdir().expect("dir");
        let module =
            SoftModule::create_with(dir.path().join("keys.age"), "pw", WorkFactor::Log2(1))
                .expect("module");
        module.ensure_kek().expect("kek");
        module.create_master(Generation(1)).expect("master 1");
        module.create_master(Generation(2)).expect("master 2");
        let root = module.new_wrapped_root().expect("root");
        let cases = [
            device(
                "VIN00000000000001-ECU01",
                true,
                &["line=1", "model=T7"],
                None,
            ),
            device("hex:00ff7f", false, &[], None),
            device("A", true, &["x"], Some(root.clone())),
        ];
        for old in cases {
            let mut new = old.clone();
            new.revision += 1;
            if old.wrapped_root.is_none() {
                new.generation = 2;
            } else {
                new.wrapped_root = Some(module.new_wrapped_root().expect("root"));
            }
            new.changed.reason = "refresh \\ now".into();
            let mut maker = LineMaker::new(&module);
            let mut straight = Vec::new();
            maker
                .key_update_line(&old, &new, &mut straight)
                .expect("line");
            let mut serde = Vec::new();
            push_update_line(&mut serde, &maker.key_update(&old, new).expect("update"))
                .expect("serde");
            assert_eq!(
                String::from_utf8(straight).expect("utf-8"),
                String::from_utf8(serde).expect("utf-8")
            );
        }
    }
}
