//! clips' data model over custody collections: the only storage clips has.
//!
//! Each function here is one or a few custody calls made as the clips workload principal;
//! nothing is kept locally. Every record names its custody subject (the user it is about), so
//! protected values are sealed under that user's key and an erasure reaches all of them.
//! Counters on videos (likes, comments, views) are read-modify-write through custody: under
//! concurrent updates an increment can be lost, which a ranking signal tolerates.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use custody_client::{Client, ClientError, CreateRecord, RecordView};

use crate::ClipsError;
use crate::media;

/// Users' profiles (record id = user id = subject).
pub const USERS: &str = "users";
/// Videos' metadata (subject = creator).
pub const VIDEOS: &str = "videos";
/// Video bytes, content-addressed (subject = uploader).
pub const CHUNKS: &str = "chunks";
/// Follows (id `follower:followee`, subject = follower).
pub const FOLLOWS: &str = "follows";
/// Likes (id `user:video`, subject = user).
pub const LIKES: &str = "likes";
/// Comments (subject = author).
pub const COMMENTS: &str = "comments";
/// Watch events, protected (subject = viewer).
pub const WATCHES: &str = "watches";

/// How many shards videos are spread over for the trending sample.
pub const SHARDS: u32 = 16;

/// The largest video clips accepts, in bytes.
pub const MAX_VIDEO_BYTES: usize = 16 << 20;

/// Chunks per custody batch-create (custody accepts 1 MiB request bodies).
const CHUNKS_PER_BATCH: usize = 16;

/// A new user's profile: public fields and protected personal data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Public: the unique @handle.
    pub handle: String,
    /// Public: the name shown.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Public: a short bio.
    #[serde(default)]
    pub bio: Option<String>,
    /// Public: the avatar's URL.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Protected: email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Protected: phone number.
    #[serde(default)]
    pub phone: Option<String>,
    /// Protected: birthdate, `YYYY-MM-DD`.
    #[serde(default)]
    pub birthdate: Option<String>,
    /// Protected: precise location, `lat,lon`.
    #[serde(default)]
    pub precise_location: Option<String>,
    /// Protected: the device id.
    #[serde(default)]
    pub device_id: Option<String>,
}

/// What anyone may see of a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicProfile {
    /// The user id.
    pub id: String,
    /// The @handle.
    pub handle: String,
    /// The name shown.
    pub display_name: String,
    /// The bio.
    pub bio: String,
    /// The avatar's URL.
    pub avatar_url: String,
}

/// A profile edit: the given public fields are replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileEdit {
    /// New display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// New bio.
    #[serde(default)]
    pub bio: Option<String>,
    /// New avatar URL.
    #[serde(default)]
    pub avatar_url: Option<String>,
}

/// A posted video's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Video {
    /// The video id.
    pub id: String,
    /// The creator's user id.
    pub creator: String,
    /// The caption.
    pub caption: String,
    /// Space-separated tags.
    pub tags: String,
    /// Length in milliseconds.
    pub duration_ms: i64,
    /// Chunk ids, in order.
    pub chunks: Vec<String>,
    /// Size of the bytes.
    pub size_bytes: i64,
    /// When it was posted (RFC 3339).
    pub posted_at: String,
    /// Likes so far.
    pub likes: i64,
    /// Comments so far.
    pub comments: i64,
    /// Views so far.
    pub views: i64,
}

/// A comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    /// The comment id.
    pub id: String,
    /// The video commented on.
    pub video: String,
    /// The author's user id.
    pub author: String,
    /// The text.
    pub text: String,
    /// When (RFC 3339).
    pub posted_at: String,
}

/// One entry of a viewer's watch history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    /// The video watched.
    pub video: String,
    /// Its creator.
    pub creator: String,
    /// How long it was watched.
    pub watched_ms: i64,
}

/// A viewer's watch history as custody released it to clips.
#[derive(Debug, Clone, PartialEq)]
pub enum History {
    /// custody released it.
    Read(Vec<Watch>),
    /// custody's policy withholds it from clips; the reason is custody's.
    Withheld(String),
}

/// A video counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `likes`.
    Likes,
    /// `comments`.
    Comments,
    /// `views`.
    Views,
}

impl Counter {
    fn field(self) -> &'static str {
        match self {
            Counter::Likes => "likes",
            Counter::Comments => "comments",
            Counter::Views => "views",
        }
    }
}

fn s(fields: &Map<String, Value>, name: &str) -> String {
    fields.get(name).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn i(fields: &Map<String, Value>, name: &str) -> i64 {
    fields.get(name).and_then(Value::as_i64).unwrap_or_default()
}

/// Now, RFC 3339.
pub fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The trending shard a video id falls in.
pub fn shard_of(video: &str) -> String {
    let n = Sha256::digest(video.as_bytes()).iter().take(4).fold(0u32, |a, b| (a << 8) | u32::from(*b));
    format!("s{}", n % SHARDS)
}

fn with_subject(id: String, subject: &str, fields: Map<String, Value>) -> CreateRecord {
    CreateRecord { id: Some(id), subject: Some(subject.to_string()), jurisdiction: None, fields }
}

fn put(m: &mut Map<String, Value>, k: &str, v: &Option<String>) {
    if let Some(v) = v {
        m.insert(k.into(), Value::String(v.clone()));
    }
}

/// Builders of the custody records clips writes, shared by the API and the seeder.
pub mod records {
    use super::*;

    /// A user's profile record.
    pub fn user(id: &str, u: &NewUser) -> CreateRecord {
        let mut m = Map::new();
        m.insert("handle".into(), Value::String(u.handle.clone()));
        put(&mut m, "display_name", &u.display_name);
        put(&mut m, "bio", &u.bio);
        put(&mut m, "avatar_url", &u.avatar_url);
        put(&mut m, "email", &u.email);
        put(&mut m, "phone", &u.phone);
        put(&mut m, "birthdate", &u.birthdate);
        put(&mut m, "precise_location", &u.precise_location);
        put(&mut m, "device_id", &u.device_id);
        with_subject(id.to_string(), id, m)
    }

    /// A video's metadata record.
    pub fn video(v: &Video) -> CreateRecord {
        let m = json!({
            "creator": v.creator, "caption": v.caption, "tags": v.tags, "duration_ms": v.duration_ms,
            "chunks": v.chunks.join(","), "size_bytes": v.size_bytes, "shard": shard_of(&v.id),
            "posted_at": v.posted_at, "likes": v.likes, "comments": v.comments, "views": v.views,
        });
        with_subject(v.id.clone(), &v.creator, m.as_object().cloned().unwrap_or_default())
    }

    /// A chunk record of `uploader`'s bytes.
    pub fn chunk(uploader: &str, c: &media::Chunk) -> CreateRecord {
        let m = json!({ "data": c.data, "size": c.size });
        with_subject(c.id.clone(), uploader, m.as_object().cloned().unwrap_or_default())
    }

    /// `follower` follows `followee`.
    pub fn follow(follower: &str, followee: &str) -> CreateRecord {
        let m = json!({ "follower": follower, "followee": followee });
        with_subject(format!("{follower}:{followee}"), follower, m.as_object().cloned().unwrap_or_default())
    }

    /// `user` likes `video`.
    pub fn like(user: &str, video: &str) -> CreateRecord {
        let m = json!({ "user": user, "video": video });
        with_subject(format!("{user}:{video}"), user, m.as_object().cloned().unwrap_or_default())
    }

    /// A comment record.
    pub fn comment(c: &Comment) -> CreateRecord {
        let m = json!({ "video": c.video, "author": c.author, "text": c.text, "posted_at": c.posted_at });
        with_subject(c.id.clone(), &c.author, m.as_object().cloned().unwrap_or_default())
    }

    /// A watch event (protected: the viewer's history).
    pub fn watch(id: &str, viewer: &str, w: &Watch, at: &str) -> CreateRecord {
        let m =
            json!({ "viewer": viewer, "video": w.video, "creator": w.creator, "watched_ms": w.watched_ms, "at": at });
        with_subject(id.to_string(), viewer, m.as_object().cloned().unwrap_or_default())
    }
}

fn video_from(r: &RecordView) -> Video {
    let f = &r.fields;
    let chunks = s(f, "chunks");
    Video {
        id: r.id.clone(),
        creator: s(f, "creator"),
        caption: s(f, "caption"),
        tags: s(f, "tags"),
        duration_ms: i(f, "duration_ms"),
        chunks: chunks.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect(),
        size_bytes: i(f, "size_bytes"),
        posted_at: s(f, "posted_at"),
        likes: i(f, "likes"),
        comments: i(f, "comments"),
        views: i(f, "views"),
    }
}

fn conflict(e: &ClientError) -> bool {
    e.status().map(|s| s.as_u16()) == Some(409)
}

fn not_found(what: impl FnOnce() -> String) -> impl FnOnce(ClientError) -> ClipsError {
    move |e| if e.status().map(|s| s.as_u16()) == Some(404) { ClipsError::NotFound(what()) } else { e.into() }
}

fn random_id(prefix: &str) -> String {
    use rand::Rng;
    format!("{prefix}{:016x}", rand::thread_rng().r#gen::<u64>())
}

/// clips' storage: a custody client authenticated as the clips workload.
#[derive(Debug, Clone)]
pub struct Store {
    custody: Client,
}

impl Store {
    /// A store over `custody`, a client holding the clips workload's token.
    pub fn new(custody: Client) -> Self {
        Self { custody }
    }

    /// The custody client.
    pub fn custody(&self) -> &Client {
        &self.custody
    }

    /// Creates a user; `id` is also their custody subject.
    ///
    /// # Errors
    /// [`ClipsError::BadInput`] for an empty handle; custody's refusals (409: id taken).
    pub async fn create_user(&self, id: &str, u: &NewUser) -> Result<(), ClipsError> {
        if u.handle.trim().is_empty() {
            return Err(ClipsError::BadInput("`handle` must not be empty".into()));
        }
        let r = records::user(id, u);
        self.custody.create(USERS, Some(id), id, r.fields).await?;
        Ok(())
    }

    /// A user's public profile.
    ///
    /// # Errors
    /// [`ClipsError::NotFound`]; custody's refusals.
    pub async fn profile(&self, id: &str) -> Result<PublicProfile, ClipsError> {
        let r = self.custody.get(USERS, id).await.map_err(not_found(|| format!("user `{id}`")))?;
        let f = &r.record.fields;
        Ok(PublicProfile {
            id: r.record.id.clone(),
            handle: s(f, "handle"),
            display_name: s(f, "display_name"),
            bio: s(f, "bio"),
            avatar_url: s(f, "avatar_url"),
        })
    }

    /// Replaces the public fields `edit` names; returns the fields changed.
    ///
    /// # Errors
    /// [`ClipsError::BadInput`] for an empty edit, [`ClipsError::NotFound`].
    pub async fn edit_profile(&self, id: &str, edit: &ProfileEdit) -> Result<Vec<String>, ClipsError> {
        let mut m = Map::new();
        put(&mut m, "display_name", &edit.display_name);
        put(&mut m, "bio", &edit.bio);
        put(&mut m, "avatar_url", &edit.avatar_url);
        if m.is_empty() {
            return Err(ClipsError::BadInput("name at least one of `display_name`, `bio`, `avatar_url`".into()));
        }
        let w = self.custody.update(USERS, id, m).await.map_err(not_found(|| format!("user `{id}`")))?;
        Ok(w.written)
    }

    /// Posts a video: its bytes as chunks (each stored once per uploader), then its metadata.
    ///
    /// # Errors
    /// [`ClipsError::BadInput`] for an empty or oversized video or an unknown creator.
    pub async fn post_video(
        &self,
        creator: &str,
        caption: &str,
        tags: &str,
        duration_ms: i64,
        bytes: &[u8],
    ) -> Result<Video, ClipsError> {
        if bytes.is_empty() || bytes.len() > MAX_VIDEO_BYTES {
            return Err(ClipsError::BadInput(format!(
                "a video is 1 to {MAX_VIDEO_BYTES} bytes, this one is {}",
                bytes.len()
            )));
        }
        self.custody.get(USERS, creator).await.map_err(|e| match not_found(String::new)(e) {
            ClipsError::NotFound(_) => ClipsError::BadInput(format!("no user `{creator}`")),
            other => other,
        })?;
        let chunks = media::split(creator, bytes);
        let mut fresh = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for c in &chunks {
            if seen.insert(c.id.clone()) {
                fresh.push(records::chunk(creator, c));
            }
        }
        for batch in fresh.chunks(CHUNKS_PER_BATCH) {
            if let Err(e) = self.custody.batch_create(CHUNKS, batch.to_vec()).await {
                if !conflict(&e) {
                    return Err(e.into());
                }
                // Some chunk is already stored (this uploader posted those bytes before).
                for r in batch {
                    let id = r.id.as_deref().unwrap_or_default();
                    if let Err(e) = self.custody.create(CHUNKS, Some(id), creator, r.fields.clone()).await
                        && !conflict(&e)
                    {
                        return Err(e.into());
                    }
                }
            }
        }
        let video = Video {
            id: random_id("v"),
            creator: creator.to_string(),
            caption: caption.to_string(),
            tags: tags.to_string(),
            duration_ms,
            chunks: chunks.iter().map(|c| c.id.clone()).collect(),
            size_bytes: bytes.len() as i64,
            posted_at: now(),
            likes: 0,
            comments: 0,
            views: 0,
        };
        let r = records::video(&video);
        self.custody.create(VIDEOS, Some(&video.id), creator, r.fields).await?;
        Ok(video)
    }

    /// A video's metadata.
    ///
    /// # Errors
    /// [`ClipsError::NotFound`].
    pub async fn video(&self, id: &str) -> Result<Video, ClipsError> {
        let r = self.custody.get(VIDEOS, id).await.map_err(not_found(|| format!("video `{id}`")))?;
        Ok(video_from(&r.record))
    }

    /// Up to 100 videos of `creator`.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn videos_by(&self, creator: &str) -> Result<Vec<Video>, ClipsError> {
        let r = self.custody.search(VIDEOS, "creator", Value::String(creator.into())).await?;
        Ok(r.records.iter().map(video_from).collect())
    }

    /// Up to 100 videos of each of `creators` (at most [`custody_client::MAX_SEARCH_VALUES`]),
    /// by creator, in one custody search and so one logged access event.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn videos_by_many(
        &self,
        creators: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<Video>>, ClipsError> {
        let values = creators.iter().map(|c| Value::String(c.clone())).collect();
        let r = self.custody.search_any(VIDEOS, "creator", values).await?;
        let mut by: std::collections::HashMap<String, Vec<Video>> =
            creators.iter().map(|c| (c.clone(), Vec::new())).collect();
        for v in r.records.iter().map(video_from) {
            // Only creators asked for: a record naming another is not put in anyone's list.
            if let Some(list) = by.get_mut(&v.creator) {
                list.push(v);
            }
        }
        Ok(by)
    }

    /// Up to 100 videos of one trending shard.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn videos_in_shard(&self, shard: &str) -> Result<Vec<Video>, ClipsError> {
        let r = self.custody.search(VIDEOS, "shard", Value::String(shard.into())).await?;
        Ok(r.records.iter().map(video_from).collect())
    }

    /// A video's bytes, every chunk checked against its address.
    ///
    /// # Errors
    /// [`ClipsError::Integrity`] for a missing or altered chunk.
    pub async fn video_bytes(&self, v: &Video) -> Result<Vec<u8>, ClipsError> {
        let mut out = Vec::with_capacity(usize::try_from(v.size_bytes).unwrap_or_default());
        for ids in v.chunks.chunks(custody_client::MAX_BATCH) {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let got = self.custody.batch_get(CHUNKS, &refs).await?;
            if let Some(m) = got.missing.first() {
                return Err(ClipsError::Integrity(format!("chunk `{m}` of video `{}` is missing", v.id)));
            }
            let by_id: std::collections::HashMap<&str, &RecordView> =
                got.records.iter().map(|r| (r.id.as_str(), r)).collect();
            for id in ids {
                let r = by_id
                    .get(id.as_str())
                    .ok_or_else(|| ClipsError::Integrity(format!("chunk `{id}` was not returned")))?;
                out.extend(media::open(&v.creator, id, &s(&r.fields, "data"))?);
            }
        }
        Ok(out)
    }

    /// Adds one to a counter of `video` (as last read) and returns the new value.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn bump(&self, video: &Video, counter: Counter) -> Result<i64, ClipsError> {
        let now = match counter {
            Counter::Likes => video.likes,
            Counter::Comments => video.comments,
            Counter::Views => video.views,
        } + 1;
        let mut m = Map::new();
        m.insert(counter.field().into(), Value::from(now));
        self.custody.update(VIDEOS, &video.id, m).await?;
        Ok(now)
    }

    /// The outcome of a record write sent together with its counter's bump: when the record
    /// failed but the counter was bumped, the counter is set back to the value it was bumped
    /// from, so it does not count what was never written. The record's error is returned.
    async fn settle(
        &self,
        video: &Video,
        counter: Counter,
        created: Result<(), ClientError>,
        bumped: Result<i64, ClipsError>,
    ) -> Result<(), ClipsError> {
        match (created, bumped) {
            (Ok(()), bumped) => bumped.map(drop),
            (Err(e), Ok(now)) => {
                let mut m = Map::new();
                m.insert(counter.field().into(), Value::from(now - 1));
                if let Err(undo) = self.custody.update(VIDEOS, &video.id, m).await {
                    tracing::warn!(video = %video.id, error = %undo, "could not set a counter back after a failed write");
                }
                Err(e.into())
            }
            (Err(e), Err(_)) => Err(e.into()),
        }
    }

    /// `follower` follows `followee`; false if they already did.
    ///
    /// # Errors
    /// [`ClipsError::NotFound`] for an unknown followee, [`ClipsError::BadInput`] for oneself.
    pub async fn follow(&self, follower: &str, followee: &str) -> Result<bool, ClipsError> {
        if follower == followee {
            return Err(ClipsError::BadInput("a user cannot follow themselves".into()));
        }
        self.custody.get(USERS, followee).await.map_err(not_found(|| format!("user `{followee}`")))?;
        let r = records::follow(follower, followee);
        match self.custody.create(FOLLOWS, r.id.as_deref(), follower, r.fields).await {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to 100 users `user` follows.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn following(&self, user: &str) -> Result<Vec<String>, ClipsError> {
        let r = self.custody.search(FOLLOWS, "follower", Value::String(user.into())).await?;
        Ok(r.records.iter().map(|r| s(&r.fields, "followee")).collect())
    }

    /// `user` likes `video`; false if they already did.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn like(&self, user: &str, video: &Video) -> Result<bool, ClipsError> {
        let r = records::like(user, &video.id);
        match self.custody.create(LIKES, r.id.as_deref(), user, r.fields).await {
            Ok(_) => {
                self.bump(video, Counter::Likes).await?;
                Ok(true)
            }
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds a comment.
    ///
    /// # Errors
    /// [`ClipsError::BadInput`] for empty text.
    pub async fn comment(&self, video: &Video, author: &str, text: &str) -> Result<Comment, ClipsError> {
        if text.trim().is_empty() || text.len() > 2000 {
            return Err(ClipsError::BadInput("a comment is 1 to 2000 bytes of text".into()));
        }
        let c = Comment {
            id: random_id("c"),
            video: video.id.clone(),
            author: author.to_string(),
            text: text.to_string(),
            posted_at: now(),
        };
        let r = records::comment(&c);
        // The comment and the counter are independent writes (each decided and logged on its
        // own): sent together, the request waits for one write's log and storage syncs, not
        // two in a row. A counter bumped for a comment that then failed is set back.
        let (created, bumped) = tokio::join!(
            self.custody.create(COMMENTS, Some(&c.id), author, r.fields),
            self.bump(video, Counter::Comments)
        );
        self.settle(video, Counter::Comments, created.map(drop), bumped).await?;
        Ok(c)
    }

    /// Up to 100 comments on a video.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn comments(&self, video: &str) -> Result<Vec<Comment>, ClipsError> {
        let r = self.custody.search(COMMENTS, "video", Value::String(video.into())).await?;
        Ok(r.records
            .iter()
            .map(|r| Comment {
                id: r.id.clone(),
                video: s(&r.fields, "video"),
                author: s(&r.fields, "author"),
                text: s(&r.fields, "text"),
                posted_at: s(&r.fields, "posted_at"),
            })
            .collect())
    }

    /// Records that `viewer` watched `video` for `watched_ms`, and counts the view.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn record_watch(&self, viewer: &str, video: &Video, watched_ms: i64) -> Result<(), ClipsError> {
        let w = Watch { video: video.id.clone(), creator: video.creator.clone(), watched_ms };
        let id = random_id("w");
        let r = records::watch(&id, viewer, &w, &now());
        // Independent writes, sent together (see [`Store::comment`]).
        let (created, bumped) =
            tokio::join!(self.custody.create(WATCHES, Some(&id), viewer, r.fields), self.bump(video, Counter::Views));
        self.settle(video, Counter::Views, created.map(drop), bumped).await
    }

    /// Up to 100 entries of `viewer`'s watch history, or custody's reason for withholding it.
    ///
    /// # Errors
    /// custody failures other than a policy refusal.
    pub async fn watch_history(&self, viewer: &str) -> Result<History, ClipsError> {
        match self.custody.search(WATCHES, "viewer", Value::String(viewer.into())).await {
            Ok(r) => {
                if r.records.iter().all(|r| r.fields.is_empty()) && !r.records.is_empty() {
                    let why = r.records.first().and_then(|r| r.withheld.first()).map(|w| w.reason.clone());
                    return Ok(History::Withheld(why.unwrap_or_else(|| "withheld".into())));
                }
                Ok(History::Read(
                    r.records
                        .iter()
                        .map(|r| Watch {
                            video: s(&r.fields, "video"),
                            creator: s(&r.fields, "creator"),
                            watched_ms: i(&r.fields, "watched_ms"),
                        })
                        .collect(),
                ))
            }
            Err(e) if e.status().map(|s| s.as_u16()) == Some(403) => {
                let why = e.problem().and_then(|p| p.withheld.first()).map(|w| w.reason.clone());
                Ok(History::Withheld(why.unwrap_or_else(|| "access denied".into())))
            }
            Err(e) => Err(e.into()),
        }
    }
}
