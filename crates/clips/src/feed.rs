//! The For You feed.
//!
//! Candidates come from up to [`FOLLOW_FANOUT`] followed creators and a trending sample (one
//! shard of videos, rotating per viewer and minute). Each is scored by engagement (likes,
//! comments, views), a bonus for followed creators, and, when custody releases the viewer's
//! watch history to clips, affinity to creators the viewer watched and a penalty for videos
//! already seen. When policy withholds watch history the feed ranks without it and says so
//! (`personalised: false` with custody's reason).
//!
//! Only the personal inputs (follows, watch history) are read from custody per request; the
//! non-personal ones (trending shards, creators' video lists, with their engagement scores)
//! are public metadata shared by every viewer and cached for a few seconds ([`Trending`]).

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

/// A cached video list: when it was read, and its videos with their engagement scores.
type Cached = (Instant, Arc<Vec<Ranked>>);

/// A video with its non-personal score (engagement only), computed once per cache fill.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// The video.
    pub video: Video,
    /// Its engagement score: likes, comments and views, log-scaled.
    pub engagement: f64,
}

impl Ranked {
    fn new(video: Video) -> Self {
        let engagement = (1.0 + video.likes as f64).ln()
            + 1.5 * (1.0 + video.comments as f64).ln()
            + 0.3 * (1.0 + video.views as f64).ln();
        Self { video, engagement }
    }
}

/// One cached list: its value, and a lock held by the one request refreshing it.
#[derive(Debug, Default)]
struct Slot {
    value: Mutex<Option<Cached>>,
    refresh: tokio::sync::Mutex<()>,
}

/// Most lists a [`Lists`] cache keeps before it drops expired ones.
const MAX_LISTS: usize = 100_000;

/// A short-lived cache of public video lists (one trending shard, or one creator's videos)
/// with their engagement scores: the non-personal part of every feed, shared by all viewers.
/// One request refreshes an expired list while the others keep the previous one, so a burst
/// of feeds never searches custody for the same list twice. It holds public video metadata
/// only, for a few seconds; custody stays the source of truth.
#[derive(Debug)]
struct Lists {
    ttl: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Lists {
    fn new(ttl: Duration) -> Self {
        Self { ttl, slots: Mutex::new(HashMap::new()) }
    }

    fn slot(&self, key: &str) -> Arc<Slot> {
        let mut map = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = map.get(key) {
            return s.clone();
        }
        if map.len() >= MAX_LISTS {
            let ttl = self.ttl;
            map.retain(|_, s| {
                s.value.lock().ok().and_then(|v| v.as_ref().map(|(at, _)| at.elapsed() < ttl)).unwrap_or(false)
            });
        }
        map.entry(key.to_string()).or_default().clone()
    }

    fn fresh(&self, slot: &Slot) -> (Option<Arc<Vec<Ranked>>>, bool) {
        match slot.value.lock().ok().and_then(|v| v.clone()) {
            Some((at, v)) => (Some(v), at.elapsed() < self.ttl),
            None => (None, false),
        }
    }

    /// The lists of `keys`, in order: fresh ones from the cache, and every one this request
    /// gets to refresh loaded together by one `load` call (given the keys to load, answering
    /// a list per key). A list another request is refreshing is taken stale if there is one,
    /// or waited for otherwise (and loaded alone if that refresh failed).
    async fn get_many<F, Fut>(&self, keys: &[String], load: F) -> Result<Vec<Arc<Vec<Ranked>>>, ClipsError>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<HashMap<String, Vec<Video>>, ClipsError>>,
    {
        let slots: Vec<Arc<Slot>> = keys.iter().map(|k| self.slot(k)).collect();
        let mut out: Vec<Option<Arc<Vec<Ranked>>>> = vec![None; keys.len()];
        let mut mine = Vec::new();
        let mut others = Vec::new();
        for (i, (slot, have)) in slots.iter().zip(out.iter_mut()).enumerate() {
            let (cached, fresh) = self.fresh(slot);
            if let (Some(v), true) = (&cached, fresh) {
                *have = Some(v.clone());
                continue;
            }
            match (cached, slot.refresh.try_lock()) {
                (_, Ok(guard)) => mine.push((i, guard)),
                // Someone is refreshing it: the previous list will do meanwhile.
                (Some(stale), Err(_)) => *have = Some(stale),
                (None, Err(_)) => others.push(i),
            }
        }
        if !mine.is_empty() {
            let wanted: Vec<String> = mine.iter().filter_map(|(i, _)| keys.get(*i).cloned()).collect();
            let mut loaded = load(wanted).await?;
            // The refresh locks are released only once every list is stored.
            for (i, _guard) in &mine {
                let (Some(key), Some(slot)) = (keys.get(*i), slots.get(*i)) else { continue };
                let list: Arc<Vec<Ranked>> =
                    Arc::new(loaded.remove(key).unwrap_or_default().into_iter().map(Ranked::new).collect());
                if let Ok(mut v) = slot.value.lock() {
                    *v = Some((Instant::now(), list.clone()));
                }
                if let Some(o) = out.get_mut(*i) {
                    *o = Some(list);
                }
            }
        }
        drop(mine);
        // One at a time, holding no other refresh lock, so two requests never wait on each other.
        for i in others {
            let (Some(key), Some(slot)) = (keys.get(i), slots.get(i)) else { continue };
            let _guard = slot.refresh.lock().await;
            let list = match self.fresh(slot) {
                (Some(v), _) => v,
                (None, _) => {
                    let mut loaded = load(vec![key.clone()]).await?;
                    let list: Arc<Vec<Ranked>> =
                        Arc::new(loaded.remove(key).unwrap_or_default().into_iter().map(Ranked::new).collect());
                    if let Ok(mut v) = slot.value.lock() {
                        *v = Some((Instant::now(), list.clone()));
                    }
                    list
                }
            };
            if let Some(o) = out.get_mut(i) {
                *o = Some(list);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    async fn get<F>(&self, key: &str, load: F) -> Result<Arc<Vec<Ranked>>, ClipsError>
    where
        F: std::future::Future<Output = Result<Vec<Video>, ClipsError>>,
    {
        let slot = self.slot(key);
        let (have, fresh) = self.fresh(&slot);
        if let (Some(v), true) = (&have, fresh) {
            return Ok(v.clone());
        }
        let _refreshing = match (have, slot.refresh.try_lock()) {
            (_, Ok(guard)) => guard,
            // Someone is refreshing it: the previous list will do meanwhile.
            (Some(stale), Err(_)) => return Ok(stale),
            (None, Err(_)) => {
                let guard = slot.refresh.lock().await;
                if let (Some(v), _) = self.fresh(&slot) {
                    return Ok(v);
                }
                guard
            }
        };
        let list: Arc<Vec<Ranked>> = Arc::new(load.await?.into_iter().map(Ranked::new).collect());
        if let Ok(mut v) = slot.value.lock() {
            *v = Some((Instant::now(), list.clone()));
        }
        Ok(list)
    }
}

/// The feed's shared, non-personal inputs: trending shards and creators' video lists, each
/// cached for a few seconds with its engagement scores (see [`Trending::shard`]).
#[derive(Debug)]
pub struct Trending {
    shards: Lists,
    creators: Lists,
}

impl Trending {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { shards: Lists::new(ttl), creators: Lists::new(ttl) }
    }

    /// The videos of `shard`, from the cache or custody.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn shard(&self, store: &Store, shard: &str) -> Result<Arc<Vec<Ranked>>, ClipsError> {
        self.shards.get(shard, store.videos_in_shard(shard)).await
    }

    /// Up to 100 videos of `creator`, from the cache or custody.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn creator(&self, store: &Store, creator: &str) -> Result<Arc<Vec<Ranked>>, ClipsError> {
        self.creators.get(creator, store.videos_by(creator)).await
    }

    /// Up to 100 videos of each of `creators` (at most
    /// [`custody_client::MAX_SEARCH_VALUES`]), in order, from the cache or, for all the
    /// expired ones together, one custody search.
    ///
    /// # Errors
    /// custody's refusals.
    pub async fn creators(&self, store: &Store, creators: &[String]) -> Result<Vec<Arc<Vec<Ranked>>>, ClipsError> {
        self.creators.get_many(creators, |wanted| async move { store.videos_by_many(&wanted).await }).await
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
struct Candidate<'a> {
    ranked: Option<&'a Ranked>,
    following: bool,
    trending: bool,
}

/// Builds `user`'s feed of at most `limit` videos.
///
/// Per request, only the personal inputs go to custody (whom `user` follows, and their watch
/// history); trending shards and creators' video lists come from `trending`'s shared cache.
///
/// # Errors
/// custody failures (a policy refusal of watch history is not one: it un-personalises).
pub async fn for_you(store: &Store, trending: &Trending, user: &str, limit: usize) -> Result<Feed, ClipsError> {
    let t0 = Instant::now();
    let shard = shard_for(user);
    let (following, history, sample) =
        tokio::join!(store.following(user), store.watch_history(user), trending.shard(store, &shard));
    let following = following?;
    let history = history?;
    let sample = sample?;
    let t_personal = t0.elapsed();

    let start = (hash32(user) as usize) % following.len().max(1);
    let creators: Vec<String> =
        following.iter().cycle().skip(start).take(FOLLOW_FANOUT.min(following.len())).cloned().collect();
    // The creators whose lists expired are searched together: one custody round trip and one
    // logged event instead of one per creator.
    let lists = if creators.is_empty() { Vec::new() } else { trending.creators(store, &creators).await? };
    let t_creators = t0.elapsed();
    let mut candidates: HashMap<&str, Candidate<'_>> = HashMap::new();
    for list in &lists {
        for r in list.iter() {
            let c = candidates.entry(r.video.id.as_str()).or_default();
            c.following = true;
            c.ranked = Some(r);
        }
    }
    for r in sample.iter() {
        let c = candidates.entry(r.video.id.as_str()).or_default();
        c.trending = true;
        if c.ranked.is_none() {
            c.ranked = Some(r);
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

    let mut scored: Vec<(f64, &Candidate<'_>, &Ranked)> = candidates
        .values()
        .filter_map(|c| {
            let r = c.ranked?;
            let v = &r.video;
            if v.creator == user {
                return None;
            }
            let mut score = r.engagement;
            if c.following {
                score += 3.0;
            }
            if let Some(a) = affinity.get(&v.creator) {
                score += 1.5 * a.min(3.0);
            }
            if seen.contains(&v.id) {
                score -= 4.0;
            }
            Some((score, c, r))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.2.video.id.cmp(&b.2.video.id)));
    scored.truncate(limit);
    let items = scored
        .into_iter()
        .map(|(score, c, r)| {
            let v = &r.video;
            let mut why = Vec::new();
            if c.following {
                why.push("following".to_string());
            }
            if c.trending {
                why.push("trending".to_string());
            }
            if affinity.contains_key(&v.creator) {
                why.push("watched-creator".to_string());
            }
            if seen.contains(&v.id) {
                why.push("seen".to_string());
            }
            FeedItem { video: v.clone(), score, why }
        })
        .collect();
    tracing::debug!(
        user,
        personal_ms = t_personal.as_secs_f64() * 1e3,
        creators_ms = (t_creators - t_personal).as_secs_f64() * 1e3,
        rank_ms = (t0.elapsed() - t_creators).as_secs_f64() * 1e3,
        "feed timing"
    );
    Ok(Feed { user: user.to_string(), personalised, reason, items })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn video(id: &str, likes: i64) -> Video {
        Video {
            id: id.into(),
            creator: "u1".into(),
            caption: String::new(),
            tags: String::new(),
            duration_ms: 1000,
            chunks: Vec::new(),
            size_bytes: 1,
            posted_at: String::new(),
            likes,
            comments: 0,
            views: 0,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_load_and_a_fresh_list_is_not_reloaded() {
        let lists = Lists::new(Duration::from_secs(3600));
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok(vec![video("v1", 3)])
        };
        let (a, b) = tokio::join!(lists.get("s1", load()), lists.get("s1", load()));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(a.unwrap()[0].video.id, "v1");
        assert_eq!(b.unwrap()[0].video.id, "v1");
        lists.get("s1", load()).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1, "fresh: served from the cache");
        lists.get("s2", load()).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2, "another key is another list");
    }

    #[tokio::test]
    async fn many_lists_load_together_and_fresh_ones_are_not_reloaded() {
        let lists = Lists::new(Duration::from_secs(3600));
        let loads = std::sync::Mutex::new(Vec::new());
        let load = |keys: Vec<String>| {
            loads.lock().unwrap().push(keys.clone());
            async move {
                Ok(keys
                    .into_iter()
                    .filter(|k| k != "nobody")
                    .map(|k| {
                        let v = video(&format!("{k}-v"), 1);
                        (k, vec![v])
                    })
                    .collect::<HashMap<_, _>>())
            }
        };
        lists.get("a", async { Ok(vec![video("a-cached", 0)]) }).await.unwrap();
        let keys: Vec<String> = ["a", "b", "nobody", "c"].iter().map(|k| k.to_string()).collect();
        let got = lists.get_many(&keys, load).await.unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0][0].video.id, "a-cached", "fresh: from the cache");
        assert_eq!(got[1][0].video.id, "b-v");
        assert!(got[2].is_empty(), "a key with no videos is an empty list");
        assert_eq!(got[3][0].video.id, "c-v");
        assert_eq!(*loads.lock().unwrap(), vec![vec!["b".to_string(), "nobody".into(), "c".into()]], "one load");
        let again = lists.get_many(&keys, load).await.unwrap();
        assert_eq!(again[3][0].video.id, "c-v");
        assert_eq!(loads.lock().unwrap().len(), 1, "all fresh now: nothing loaded");
    }

    #[tokio::test]
    async fn concurrent_get_many_share_loads_and_a_repeated_key_is_fine() {
        let lists = Lists::new(Duration::from_secs(3600));
        let loaded = AtomicUsize::new(0);
        let load = |keys: Vec<String>| {
            loaded.fetch_add(keys.len(), Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                Ok(keys.into_iter().map(|k| (k.clone(), vec![video(&k, 0)])).collect::<HashMap<_, _>>())
            }
        };
        let k1: Vec<String> = ["a", "b", "a"].iter().map(|k| k.to_string()).collect();
        let k2: Vec<String> = ["b", "a"].iter().map(|k| k.to_string()).collect();
        let (x, y) = tokio::join!(lists.get_many(&k1, load), lists.get_many(&k2, load));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.iter().map(|l| l[0].video.id.as_str()).collect::<Vec<_>>(), ["a", "b", "a"]);
        assert_eq!(y.iter().map(|l| l[0].video.id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(loaded.load(Ordering::SeqCst), 2, "each list loaded once");
    }

    #[tokio::test]
    async fn an_expired_list_is_reloaded_and_scored_by_engagement() {
        let lists = Lists::new(Duration::ZERO);
        let loads = AtomicUsize::new(0);
        let load = |likes| {
            let loads = &loads;
            async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(vec![video("v1", likes)])
            }
        };
        let first = lists.get("s1", load(0)).await.unwrap();
        let second = lists.get("s1", load(10)).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert!(second[0].engagement > first[0].engagement);
    }
}
