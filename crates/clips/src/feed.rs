//! The For You feed.
//!
//! Candidates come from up to [`FOLLOW_FANOUT`] followed creators and a trending sample (one
//! shard of videos, rotating per viewer and minute). Each is scored by engagement (likes,
//! comments, views), a bonus for followed creators, and, when custody releases the viewer's
//! watch history to clips, affinity to creators the viewer watched and a penalty for videos
//! already seen. When policy withholds watch history the feed ranks without it and says so
//! (`personalised: false` with custody's reason).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ClipsError;
use crate::store::{History, SHARDS, Store, Video};

/// Most followed creators whose videos one feed request considers.
pub const FOLLOW_FANOUT: usize = 4;

/// One ranked video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedItem {
    /// The video.
    pub video: Video,
    /// Its score.
    pub score: f64,
    /// Why it is here: `following`, `trending`, `watched-creator`, `seen`.
    pub why: Vec<String>,
}

/// A viewer's feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feed {
    /// The viewer.
    pub user: String,
    /// Whether the viewer's watch history shaped the ranking.
    pub personalised: bool,
    /// When not personalised: why (custody's reason for withholding watch history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ranked videos.
    pub items: Vec<FeedItem>,
}

/// A cached shard: when it was read, and its videos.
type Cached = (Instant, Arc<Vec<Video>>);

/// A short-lived cache of trending shards. It holds public video metadata only, for a few
/// seconds, so a burst of feed requests does not search the same shard again; custody stays
/// the source of truth.
#[derive(Debug)]
pub struct Trending {
    ttl: Duration,
    shards: Mutex<HashMap<String, Cached>>,
}

impl Trending {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, shards: Mutex::new(HashMap::new()) }
    }

    /// The videos of `shard`, from the cache or custody.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn shard(&self, store: &Store, shard: &str) -> Result<Arc<Vec<Video>>, ClipsError> {
        if let Ok(map) = self.shards.lock()
            && let Some((at, v)) = map.get(shard)
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let videos = Arc::new(store.videos_in_shard(shard).await?);
        if let Ok(mut map) = self.shards.lock() {
            map.insert(shard.to_string(), (Instant::now(), videos.clone()));
        }
        Ok(videos)
    }
}

fn hash32(s: &str) -> u32 {
    Sha256::digest(s.as_bytes()).iter().take(4).fold(0u32, |a, b| (a << 8) | u32::from(*b))
}

/// The trending shard `user` sees this minute.
pub fn shard_for(user: &str) -> String {
    let minute = time::OffsetDateTime::now_utc().unix_timestamp() / 60;
    let n = (u64::from(hash32(user)) + minute.unsigned_abs()) % u64::from(SHARDS);
    format!("s{n}")
}

#[derive(Default)]
struct Candidate {
    video: Option<Video>,
    following: bool,
    trending: bool,
}

/// Builds `user`'s feed of at most `limit` videos.
///
/// # Errors
/// custody failures (a policy refusal of watch history is not one: it un-personalises).
pub async fn for_you(store: &Store, trending: &Trending, user: &str, limit: usize) -> Result<Feed, ClipsError> {
    let shard = shard_for(user);
    let (following, history, sample) =
        tokio::join!(store.following(user), store.watch_history(user), trending.shard(store, &shard));
    let following = following?;
    let history = history?;
    let sample = sample?;

    let start = (hash32(user) as usize) % following.len().max(1);
    let creators: Vec<String> =
        following.iter().cycle().skip(start).take(FOLLOW_FANOUT.min(following.len())).cloned().collect();
    let mut tasks = tokio::task::JoinSet::new();
    for c in creators {
        let store = store.clone();
        tasks.spawn(async move { store.videos_by(&c).await });
    }
    let mut candidates: HashMap<String, Candidate> = HashMap::new();
    while let Some(res) = tasks.join_next().await {
        let videos = res.map_err(|e| ClipsError::BadInput(format!("feed task failed: {e}")))??;
        for v in videos {
            let c = candidates.entry(v.id.clone()).or_default();
            c.following = true;
            c.video = Some(v);
        }
    }
    for v in sample.iter() {
        let c = candidates.entry(v.id.clone()).or_default();
        c.trending = true;
        if c.video.is_none() {
            c.video = Some(v.clone());
        }
    }

    let (personalised, reason, affinity, seen) = match history {
        History::Read(watches) => {
            let mut affinity: HashMap<String, f64> = HashMap::new();
            let mut seen = std::collections::HashSet::new();
            for w in watches {
                *affinity.entry(w.creator).or_default() += 1.0;
                seen.insert(w.video);
            }
            (true, None, affinity, seen)
        }
        History::Withheld(why) => (
            false,
            Some(format!("custody withholds watch history from clips ({why}); ranked by follows and engagement only")),
            HashMap::new(),
            std::collections::HashSet::new(),
        ),
    };

    let mut items: Vec<FeedItem> = candidates
        .into_values()
        .filter_map(|c| {
            let v = c.video?;
            if v.creator == user {
                return None;
            }
            let mut why = Vec::new();
            let mut score =
                (1.0 + v.likes as f64).ln() + 1.5 * (1.0 + v.comments as f64).ln() + 0.3 * (1.0 + v.views as f64).ln();
            if c.following {
                score += 3.0;
                why.push("following".to_string());
            }
            if c.trending {
                why.push("trending".to_string());
            }
            if let Some(a) = affinity.get(&v.creator) {
                score += 1.5 * a.min(3.0);
                why.push("watched-creator".to_string());
            }
            if seen.contains(&v.id) {
                score -= 4.0;
                why.push("seen".to_string());
            }
            Some(FeedItem { video: v, score, why })
        })
        .collect();
    items.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.video.id.cmp(&b.video.id)));
    items.truncate(limit);
    Ok(Feed { user: user.to_string(), personalised, reason, items })
}
