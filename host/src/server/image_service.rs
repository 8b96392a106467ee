//! CRI ImageService over the node's [`crate::image::ImageStore`].

use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService as CriImageService;
use tonic::{Request, Response, Status};

use crate::image::{Image, RegistryAuth};
use crate::runtime::Runtime;

pub struct ImageService {
    runtime: Arc<Runtime>,
}

impl ImageService {
    pub fn new(runtime: Arc<Runtime>) -> ImageService {
        ImageService { runtime }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn status(error: crate::image::ImageError) -> Status {
    error.into()
}

/// The image's user as the CRI wants it: a numeric uid, or a name.
fn image_message(image: &Image) -> cri::Image {
    let user = image.config.user.clone().unwrap_or_default();
    let user = user.split(':').next().unwrap_or("").to_string();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user),
    };
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn image_name(spec: Option<cri::ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("image.image is empty"))
}

/// CRI credentials, in this order: `registry_token` (a bearer token, used
/// as is), `identity_token` (an OAuth2 refresh token, exchanged for one;
/// Docker sets a placeholder username beside it, so it goes first),
/// username/password, `auth` (base64 "user:pass").
fn registry_auth(auth: Option<cri::AuthConfig>) -> Result<RegistryAuth, Status> {
    let Some(auth) = auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    if !auth.registry_token.is_empty() {
        return Ok(RegistryAuth::Bearer(auth.registry_token));
    }
    if !auth.identity_token.is_empty() {
        return Ok(RegistryAuth::IdentityToken(auth.identity_token));
    }
    if !auth.username.is_empty() {
        return Ok(RegistryAuth::Basic {
            username: auth.username,
            password: auth.password,
        });
    }
    if !auth.auth.is_empty() {
        let decoded = base64_decode(&auth.auth)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Status::invalid_argument("auth.auth is not base64 of \"user:password\"")
            })?;
        let (username, password) = decoded.split_once(':').ok_or_else(|| {
            Status::invalid_argument("auth.auth is not base64 of \"user:password\"")
        })?;
        return Ok(RegistryAuth::Basic {
            username: username.into(),
            password: password.into(),
        });
    }
    Ok(RegistryAuth::Anonymous)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[tonic::async_trait]
impl CriImageService for ImageService {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Reply<cri::ListImagesResponse> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(name) => self
                .runtime
                .images()
                .get(&name)
                .map_err(status)?
                .into_iter()
                .collect(),
            None => self.runtime.images().list(),
        };
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(image_message).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Reply<cri::ImageStatusResponse> {
        let name = image_name(request.into_inner().image)?;
        // CRI: an image that is not present is an empty answer, not an
        // error.
        let image = self.runtime.images().get(&name).map_err(status)?;
        Ok(Response::new(cri::ImageStatusResponse {
            image: image.as_ref().map(image_message),
            info: Default::default(),
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Reply<cri::PullImageResponse> {
        let request = request.into_inner();
        let name = image_name(request.image)?;
        let auth = registry_auth(request.auth)?;
        let image = self
            .runtime
            .images()
            .pull(&name, auth)
            .await
            .map_err(status)?;
        tracing::info!(image = %name, id = %image.id, "image pulled");
        Ok(Response::new(cri::PullImageResponse {
            image_ref: image.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Reply<cri::RemoveImageResponse> {
        let name = image_name(request.into_inner().image)?;
        let Some(image) = self.runtime.images().get(&name).map_err(status)? else {
            return Ok(Response::new(cri::RemoveImageResponse {}));
        };
        // Its layers are bind-mounted into running pods: deleting them
        // would change those containers' files underneath them.
        if let Some(user) = self
            .runtime
            .containers()
            .iter()
            .find(|c| c.record().image_id == image.id)
        {
            return Err(Status::failed_precondition(format!(
                "image {name} is used by container {}",
                user.id
            )));
        }
        self.runtime.images().remove(&name).map_err(status)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Reply<cri::ImageFsInfoResponse> {
        let usage = self.runtime.images().fs_usage().map_err(status)?;
        let filesystem = cri::FilesystemUsage {
            timestamp: crate::runtime::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: usage.mountpoint.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes_used,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![filesystem.clone()],
            container_filesystems: vec![filesystem],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_credentials_decode() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("*").is_none());
        let auth = registry_auth(Some(cri::AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        }))
        .unwrap();
        assert!(
            matches!(auth, RegistryAuth::Basic { username, password } if username == "user" && password == "pass")
        );
        let bad = registry_auth(Some(cri::AuthConfig {
            auth: "bm9jb2xvbg==".into(),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn tokens_are_accepted_and_win_over_a_username() {
        let auth = registry_auth(Some(cri::AuthConfig {
            registry_token: "bearer-tok".into(),
            username: "someone".into(),
            ..Default::default()
        }))
        .unwrap();
        assert!(matches!(auth, RegistryAuth::Bearer(t) if t == "bearer-tok"));
        let auth = registry_auth(Some(cri::AuthConfig {
            identity_token: "refresh-tok".into(),
            username: "<token>".into(),
            ..Default::default()
        }))
        .unwrap();
        assert!(matches!(&auth, RegistryAuth::IdentityToken(t) if t == "refresh-tok"));
        assert!(!format!("{auth:?}").contains("refresh-tok"));
        let auth = registry_auth(Some(cri::AuthConfig::default())).unwrap();
        assert!(matches!(auth, RegistryAuth::Anonymous));
    }
}
