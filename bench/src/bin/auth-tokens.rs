//! Signs JWTs for bench/run-auth.sh.
//!
//! Usage: auth-tokens ALG KEY_FILE KID COUNT OUT_FILE
//!
//! ALG is HS256, RS256 or ES256. KEY_FILE holds the HMAC secret (raw bytes, HS256) or a
//! PKCS#8 private key PEM (`openssl genpkey`). Writes COUNT distinct compact tokens, one per
//! line: header `kid` = KID, claims `sub`, `iat`, `exp` (30 days ahead) and a unique `jti`,
//! so no two tokens share a verified-token cache entry. Signing is spread over all cores.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const LIFETIME_S: u64 = 30 * 24 * 3600;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [alg, key_file, kid, count, out] = args.as_slice() else {
        bail!("usage: auth-tokens HS256|RS256|ES256 KEY_FILE KID COUNT OUT_FILE");
    };
    let count: usize = count.parse().context("COUNT must be a number")?;
    let key_bytes = std::fs::read(key_file).with_context(|| format!("reading {key_file}"))?;
    let (algorithm, key) = match alg.as_str() {
        "HS256" => (Algorithm::HS256, EncodingKey::from_secret(&key_bytes)),
        "RS256" => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&key_bytes).context("RSA private key PEM")?,
        ),
        "ES256" => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&key_bytes).context("EC private key PEM")?,
        ),
        other => bail!("unsupported algorithm {other} (HS256, RS256, ES256)"),
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.clone());
    let iat = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let exp = iat + LIFETIME_S;

    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(count.max(1));
    let chunk = count.div_ceil(threads.max(1)).max(1);
    let parts: Vec<anyhow::Result<Vec<String>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (header, key) = (&header, &key);
                scope.spawn(move || {
                    let start = t * chunk;
                    let end = (start + chunk).min(count);
                    (start..end)
                        .map(|i| {
                            let claims = json!({"sub": "bench", "iat": iat, "exp": exp, "jti": format!("t{i}")});
                            encode(header, &claims, key).context("signing")
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("signing thread panicked")))
            })
            .collect()
    });
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("creating {out}"))?,
    );
    for part in parts {
        for token in part? {
            writeln!(file, "{token}")?;
        }
    }
    file.flush()?;
    Ok(())
}
