//! Optional AWS Signature Version 4 on upstream requests (`[upstream.sigv4] enabled = true`).
//!
//! Amazon stopped requiring SigV4 for SP-API on 2 October 2023 and ignores a signature if one is
//! sent, so this is off by default. When on, requests are signed for service `execute-api` in the
//! region's AWS region, over the headers (including `host` and `x-amz-access-token`) with an
//! unsigned payload, so bodies keep streaming.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::Request;

use crate::config::SigV4Config;
use crate::store::Region;

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("SigV4 signing failed: {0}")]
pub struct SignError(String);

/// Signs upstream requests.
pub struct Signer {
    identity: Identity,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { credentials: **REDACTED** }")
    }
}

/// The AWS region SP-API runs in for each SP-API region.
pub fn aws_region(region: Region) -> &'static str {
    match region {
        Region::Na => "us-east-1",
        Region::Eu => "eu-west-1",
        Region::Fe => "us-west-2",
    }
}

impl Signer {
    /// A signer with static IAM credentials.
    pub fn new(cfg: &SigV4Config) -> Signer {
        let creds = Credentials::new(
            cfg.access_key_id.expose().clone(),
            cfg.secret_access_key.expose().clone(),
            None,
            None,
            "spgate-config",
        );
        Signer {
            identity: creds.into(),
        }
    }

    /// Adds `x-amz-date` and `authorization` to a request whose URI and headers are final.
    pub fn sign<B>(&self, req: &mut Request<B>, region: Region) -> Result<(), SignError> {
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(aws_region(region))
            .name("execute-api")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SignError(e.to_string()))?
            .into();
        let uri = req.uri().to_string();
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
            .collect();
        let signable = SignableRequest::new(
            req.method().as_str(),
            &uri,
            headers.into_iter(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| SignError(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| SignError(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(req);
        if let Some(auth) = req.headers_mut().get_mut(http::header::AUTHORIZATION) {
            auth.set_sensitive(true);
        }
        Ok(())
    }
}
