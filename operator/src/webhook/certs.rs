//! The webhook's serving certificate.
//!
//! Self-managed mode: the operator keeps a CA and a serving certificate
//! (ECDSA P-256, made with `rcgen`) in a Secret of its namespace, issues a new
//! serving certificate before the old one expires (or when the names it must
//! carry change), replaces the CA before it would outlive a serving
//! certificate, and keeps the previous CA in the bundle while replicas may
//! still serve with a certificate it signed. Every replica runs this; they
//! agree through the Secret (create, or replace at a resourceVersion).
//!
//! External mode (cert-manager): the Secret is written by someone else; the
//! operator only reads it.
//!
//! [`plan`] and [`issue`] are pure (time is an argument); [`Material`] is
//! what the Secret holds.

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// Lifetime of a CA the operator makes, in serving-certificate lifetimes.
const CA_LIFETIMES: i64 = 5;
/// Back-dating of `notBefore`, for clocks a little behind ours.
const BACKDATE_SECS: i64 = 3600;

/// The PEM documents of the Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Material {
    pub ca_cert: String,
    pub ca_key: Option<String>,
    pub previous_ca_cert: Option<String>,
    pub tls_cert: String,
    pub tls_key: String,
}

impl Material {
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Option<Material> {
        let text = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.clone()).ok());
        Some(Material {
            ca_cert: text(CA_CERT).unwrap_or_default(),
            ca_key: text(CA_KEY),
            previous_ca_cert: text(PREVIOUS_CA_CERT),
            tls_cert: text(TLS_CERT)?,
            tls_key: text(TLS_KEY)?,
        })
    }

    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut d = BTreeMap::new();
        d.insert(CA_CERT.into(), self.ca_cert.clone().into_bytes());
        d.insert(TLS_CERT.into(), self.tls_cert.clone().into_bytes());
        d.insert(TLS_KEY.into(), self.tls_key.clone().into_bytes());
        if let Some(k) = &self.ca_key {
            d.insert(CA_KEY.into(), k.clone().into_bytes());
        }
        if let Some(p) = &self.previous_ca_cert {
            d.insert(PREVIOUS_CA_CERT.into(), p.clone().into_bytes());
        }
        d
    }

    /// The CA bundle the API server should trust: the CA, and the previous
    /// one while it has not expired.
    pub fn ca_bundle(&self, now: i64) -> String {
        let mut bundle = self.ca_cert.clone();
        if let Some(prev) = &self.previous_ca_cert
            && Facts::of(prev).is_ok_and(|f| f.not_after > now)
        {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(prev);
        }
        bundle
    }
}

/// What a certificate says, as far as rotation cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub not_before: i64,
    pub not_after: i64,
    pub names: Vec<String>,
}

impl Facts {
    /// Reads the first certificate of a PEM document.
    pub fn of(pem: &str) -> Result<Facts> {
        let (_, doc) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("not a PEM certificate: {e}")))?;
        let cert = doc
            .parse_x509()
            .map_err(|e| Error::Certificate(format!("not an X.509 certificate: {e}")))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            names.push(std::net::Ipv4Addr::from(a).to_string());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            names.push(std::net::Ipv6Addr::from(a).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        names.sort();
        Ok(Facts {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            names,
        })
    }
}

/// How long certificates live and when they are replaced.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub validity_secs: i64,
    pub renew_before_secs: i64,
}

/// What to do with the Secret's current content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Good as it is; look again at this Unix time.
    Keep { recheck_at: i64 },
    /// New serving certificate from the current CA (why).
    IssueServing(String),
    /// New CA and serving certificate (why).
    NewCa(String),
}

/// The names the serving certificate must carry: the Service's DNS names and
/// any extra names or addresses, sorted.
pub fn names(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut n = vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    n.extend(extra.iter().cloned());
    n.sort();
    n.dedup();
    n
}

/// Decides, at Unix time `now`, whether `current` serves `names` long enough.
pub fn plan(current: Option<&Material>, names: &[String], now: i64, life: Lifetimes) -> Plan {
    let Some(m) = current else {
        return Plan::NewCa("no certificate yet".into());
    };
    let (ca, serving) = match (m.ca_key.as_ref(), Facts::of(&m.ca_cert), Facts::of(&m.tls_cert)) {
        (None, _, _) => return Plan::NewCa("the Secret holds no CA key".into()),
        (_, Err(e), _) => return Plan::NewCa(format!("unreadable CA: {e}")),
        (_, _, Err(e)) => return Plan::IssueServing(format!("unreadable serving certificate: {e}")),
        (Some(_), Ok(ca), Ok(serving)) => (ca, serving),
    };
    // A CA must outlive any serving certificate it signs.
    if ca.not_after - now < life.validity_secs + life.renew_before_secs {
        return Plan::NewCa("the CA would expire before a new serving certificate".into());
    }
    if serving.names != names {
        return Plan::IssueServing(format!(
            "names changed (has {}, needs {})",
            serving.names.join(","),
            names.join(",")
        ));
    }
    if serving.not_after - now <= life.renew_before_secs {
        return Plan::IssueServing("the serving certificate is due for renewal".into());
    }
    Plan::Keep {
        recheck_at: serving.not_after - life.renew_before_secs,
    }
}

fn at(unix: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| Error::Certificate(e.to_string()))
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

/// Carries out `plan` (anything but `Keep`), returning the new content.
pub fn issue(
    plan: &Plan,
    current: Option<&Material>,
    names: &[String],
    now: i64,
    life: Lifetimes,
) -> Result<Material> {
    let (ca_cert, ca_key, previous) = match (plan, current) {
        (Plan::IssueServing(_), Some(m)) => (
            m.ca_cert.clone(),
            m.ca_key
                .clone()
                .ok_or_else(|| Error::Certificate("no CA key to issue with".into()))?,
            m.previous_ca_cert.clone(),
        ),
        _ => {
            let key = KeyPair::generate().map_err(cert_err)?;
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "somastack-operator webhook CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = at(now - BACKDATE_SECS)?;
            params.not_after = at(now + CA_LIFETIMES * life.validity_secs)?;
            let cert = params.self_signed(&key).map_err(cert_err)?;
            // The outgoing CA stays trusted while certificates it signed may be served.
            let previous = current
                .map(|m| m.ca_cert.clone())
                .filter(|c| Facts::of(c).is_ok_and(|f| f.not_after > now));
            (cert.pem(), key.serialize_pem(), previous)
        }
    };
    let ca_keypair = KeyPair::from_pem(&ca_key).map_err(cert_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_keypair).map_err(cert_err)?;
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at(now - BACKDATE_SECS)?;
    params.not_after = at(now + life.validity_secs)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    Ok(Material {
        ca_cert,
        ca_key: Some(ca_key),
        previous_ca_cert: previous,
        tls_cert: cert.pem(),
        tls_key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const LIFE: Lifetimes = Lifetimes {
        validity_secs: 365 * DAY,
        renew_before_secs: 30 * DAY,
    };
    const NOW: i64 = 1_795_000_000; // 2026-11-18

    fn sans() -> Vec<String> {
        names(
            "somastack-operator-webhook",
            "somastack-system",
            &["127.0.0.1".into()],
        )
    }

    /// The plan for `current` at `now`, for [`sans`] and [`LIFE`].
    fn plan_at(current: Option<&Material>, now: i64) -> Plan {
        plan(current, &sans(), now, LIFE)
    }

    /// What `plan` issues for `current` at `now`, as [`plan_at`].
    fn issue_at(plan: &Plan, current: Option<&Material>, now: i64) -> Material {
        issue(plan, current, &sans(), now, LIFE).unwrap()
    }

    fn fresh() -> Material {
        issue_at(&Plan::NewCa("test".into()), None, NOW)
    }

    #[test]
    fn names_cover_every_service_spelling() {
        let n = sans();
        assert!(n.contains(&"somastack-operator-webhook.somastack-system.svc".to_string()));
        assert!(n.contains(&"somastack-operator-webhook.somastack-system.svc.cluster.local".to_string()));
        assert!(n.contains(&"127.0.0.1".to_string()));
    }

    #[test]
    fn a_new_certificate_carries_the_names_and_lifetimes() {
        let m = fresh();
        let serving = Facts::of(&m.tls_cert).unwrap();
        assert_eq!(serving.names, sans());
        assert_eq!(serving.not_after, NOW + LIFE.validity_secs);
        let ca = Facts::of(&m.ca_cert).unwrap();
        assert_eq!(ca.not_after, NOW + 5 * LIFE.validity_secs);
        assert_eq!(m.previous_ca_cert, None);
        // Survives the trip through the Secret.
        assert_eq!(Material::from_data(&m.to_data()), Some(m));
    }

    #[test]
    fn keeps_until_renewal_is_due() {
        let m = fresh();
        let due = NOW + LIFE.validity_secs - LIFE.renew_before_secs;
        assert_eq!(plan_at(Some(&m), NOW), Plan::Keep { recheck_at: due });
        assert!(matches!(plan_at(Some(&m), due), Plan::IssueServing(_)));
    }

    #[test]
    fn renewal_keeps_the_ca_and_moves_expiry() {
        let m = fresh();
        let later = NOW + 340 * DAY;
        let p = plan_at(Some(&m), later);
        let renewed = issue_at(&p, Some(&m), later);
        assert_eq!(renewed.ca_cert, m.ca_cert);
        assert_ne!(renewed.tls_key, m.tls_key);
        assert_eq!(
            Facts::of(&renewed.tls_cert).unwrap().not_after,
            later + LIFE.validity_secs
        );
    }

    #[test]
    fn changed_names_reissue() {
        let m = fresh();
        let other = names("renamed", "somastack-system", &[]);
        assert!(matches!(plan(Some(&m), &other, NOW, LIFE), Plan::IssueServing(_)));
    }

    #[test]
    fn an_ageing_ca_is_replaced_and_the_old_one_stays_in_the_bundle() {
        let m = fresh();
        let late = NOW + 4 * LIFE.validity_secs; // CA has one lifetime left
        let p = plan_at(Some(&m), late);
        assert!(matches!(p, Plan::NewCa(_)), "{p:?}");
        let next = issue_at(&p, Some(&m), late);
        assert_ne!(next.ca_cert, m.ca_cert);
        assert_eq!(next.previous_ca_cert.as_deref(), Some(m.ca_cert.as_str()));
        let bundle = next.ca_bundle(late);
        assert!(bundle.contains(&next.ca_cert) && bundle.contains(&m.ca_cert));
        // Once the old CA has expired it leaves the bundle.
        assert_eq!(next.ca_bundle(NOW + 6 * LIFE.validity_secs), next.ca_cert);
    }

    #[test]
    fn unusable_content_starts_over() {
        assert!(matches!(plan_at(None, NOW), Plan::NewCa(_)));
        let mut m = fresh();
        m.ca_key = None;
        assert!(matches!(plan_at(Some(&m), NOW), Plan::NewCa(_)));
        let mut m = fresh();
        m.tls_cert = "garbage".into();
        assert!(matches!(plan_at(Some(&m), NOW), Plan::IssueServing(_)));
    }

    #[test]
    fn the_serving_certificate_verifies_against_the_ca() {
        let m = fresh();
        let (_, ca) = x509_parser::pem::parse_x509_pem(m.ca_cert.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        let (_, leaf) = x509_parser::pem::parse_x509_pem(m.tls_cert.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        assert_eq!(leaf.issuer(), ca.subject());
        leaf.verify_signature(Some(ca.public_key())).unwrap();
    }
}
