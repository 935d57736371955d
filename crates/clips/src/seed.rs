//! Synthetic users, videos and activity, written through custody as the clips workload.
//!
//! Everything is deterministic in the plan's seed: user `u{i}`, video `v{j}` and every follow,
//! like, watch and comment are functions of their index, so a load generator can address the
//! seeded population without asking anyone. Creators and videos are picked with a skewed
//! (power-law-like) distribution so a few are popular, as on a real platform. Records go in
//! batch-creates (each record still decided, logged and receipted by custody), a few in flight.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use custody_client::{Client, ClientError, CreateRecord};

use crate::ClipsError;
use crate::media;
use crate::store::{self, Comment, NewUser, Video, Watch, records};

/// How much to seed.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    /// Users (`u0` ..).
    pub users: u64,
    /// Whether to seed videos and activity after the users.
    pub activity: bool,
    /// Videos per user, on average (`v0` ..).
    pub videos_per_user: f64,
    /// Follows per user.
    pub follows_per_user: u32,
    /// Likes per user.
    pub likes_per_user: u32,
    /// Watch events per user.
    pub watches_per_user: u32,
    /// Share of users who leave one comment.
    pub comment_share: f64,
    /// Bytes of each synthetic video.
    pub video_bytes: usize,
    /// The seed everything derives from.
    pub seed: u64,
    /// Batch requests in flight.
    pub concurrency: usize,
}

impl SeedPlan {
    /// The default mix for `users` users.
    pub fn new(users: u64) -> Self {
        Self {
            users,
            activity: true,
            videos_per_user: 0.5,
            follows_per_user: 5,
            likes_per_user: 3,
            watches_per_user: 3,
            comment_share: 0.25,
            video_bytes: 2048,
            seed: 7,
            concurrency: 8,
        }
    }

    /// Number of videos seeded.
    pub fn videos(&self) -> u64 {
        if self.activity { ((self.users as f64) * self.videos_per_user).ceil().max(1.0) as u64 } else { 0 }
    }
}

/// A seeding phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// User profiles.
    Users,
    /// Videos with their chunks.
    Videos,
    /// Follows.
    Follows,
    /// Likes.
    Likes,
    /// Watch events.
    Watches,
    /// Comments.
    Comments,
}

impl Phase {
    /// The phase's name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Users => "users",
            Phase::Videos => "videos",
            Phase::Follows => "follows",
            Phase::Likes => "likes",
            Phase::Watches => "watch events",
            Phase::Comments => "comments",
        }
    }
}

/// What one phase wrote.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    /// The phase.
    pub phase: Phase,
    /// Records created in custody.
    pub records: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// What seeding wrote.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    /// Per phase.
    pub phases: Vec<PhaseReport>,
}

impl SeedReport {
    /// Records created in all phases.
    pub fn records(&self) -> u64 {
        self.phases.iter().map(|p| p.records).sum()
    }
}

/// Progress callback: phase, units done, units in the phase.
pub type Progress = Arc<dyn Fn(Phase, u64, u64) + Send + Sync>;

fn rng(seed: u64, stream: u64, i: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// A skewed pick in `0..n`: low indexes are far more likely.
fn skewed(r: &mut StdRng, n: u64, exponent: f64) -> u64 {
    let x: f64 = r.r#gen();
    ((n as f64) * x.powf(exponent)).floor().min((n.max(1) - 1) as f64) as u64
}

const FIRST: &[&str] = &["Ada", "Bo", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"];
const LAST: &[&str] = &["Stone", "Rivera", "Okafor", "Lund", "Nakamura", "Silva", "Park", "Moreau", "Khan"];
const TOPICS: &[&str] = &["cooking", "skate", "cats", "travel", "dance", "diy", "music", "comedy", "science"];

fn pick<'a>(r: &mut StdRng, from: &[&'a str]) -> &'a str {
    from.get(r.gen_range(0..from.len())).copied().unwrap_or_default()
}

/// User `i`'s synthetic profile.
pub fn user(plan: &SeedPlan, i: u64) -> NewUser {
    let r = &mut rng(plan.seed, 1, i);
    let (first, last) = (pick(r, FIRST), pick(r, LAST));
    NewUser {
        handle: format!("{}_{}{i}", first.to_lowercase(), last.to_lowercase()),
        display_name: Some(format!("{first} {last}")),
        bio: Some(format!("{} and {} videos", pick(r, TOPICS), pick(r, TOPICS))),
        avatar_url: Some(format!("https://cdn.clips.example/avatars/u{i}.jpg")),
        email: Some(format!("{}.{}{i}@mail.example", first.to_lowercase(), last.to_lowercase())),
        phone: Some(format!("+1-555-{:07}", i % 10_000_000)),
        birthdate: Some(format!("{}-{:02}-{:02}", r.gen_range(1960..2008), r.gen_range(1..13), r.gen_range(1..29))),
        precise_location: Some(format!("{:.5},{:.5}", r.gen_range(25.0..48.0), r.gen_range(-123.0..-70.0))),
        device_id: Some(format!("dev-{:016x}", r.r#gen::<u64>())),
    }
}

/// The creator of video `j`.
pub fn creator_of(plan: &SeedPlan, j: u64) -> u64 {
    skewed(&mut rng(plan.seed, 2, j), plan.users, 2.0)
}

/// One user's seeded activity.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    /// Users followed.
    pub follows: Vec<u64>,
    /// Videos liked.
    pub likes: Vec<u64>,
    /// Videos watched and for how long.
    pub watches: Vec<(u64, i64)>,
    /// A comment: video and text.
    pub comment: Option<(u64, String)>,
}

/// User `i`'s seeded activity.
pub fn activity(plan: &SeedPlan, i: u64) -> Activity {
    let r = &mut rng(plan.seed, 3, i);
    let videos = plan.videos();
    let mut a = Activity::default();
    if videos == 0 {
        return a;
    }
    let mut seen = HashSet::new();
    for _ in 0..plan.follows_per_user * 2 {
        if a.follows.len() >= plan.follows_per_user as usize {
            break;
        }
        let c = creator_of(plan, skewed(r, videos, 1.5));
        if c != i && seen.insert(c) {
            a.follows.push(c);
        }
    }
    let mut liked = HashSet::new();
    for _ in 0..plan.likes_per_user {
        let v = skewed(r, videos, 2.0);
        if liked.insert(v) {
            a.likes.push(v);
        }
    }
    for _ in 0..plan.watches_per_user {
        a.watches.push((skewed(r, videos, 2.0), r.gen_range(500..60_000)));
    }
    if r.gen_bool(plan.comment_share.clamp(0.0, 1.0)) {
        a.comment = Some((skewed(r, videos, 2.0), format!("love this {} clip", pick(r, TOPICS))));
    }
    a
}

fn video_bytes(plan: &SeedPlan, j: u64) -> Vec<u8> {
    let mut r = rng(plan.seed, 4, j);
    (0..plan.video_bytes).map(|_| r.r#gen::<u8>()).collect()
}

type Generator = Arc<dyn Fn(u64) -> Vec<(&'static str, CreateRecord)> + Send + Sync>;

async fn write_batch(client: &Client, recs: Vec<(&'static str, CreateRecord)>) -> Result<u64, ClipsError> {
    let n = recs.len() as u64;
    let mut order: Vec<&'static str> = Vec::new();
    let mut by: std::collections::HashMap<&'static str, Vec<CreateRecord>> = std::collections::HashMap::new();
    for (c, r) in recs {
        if !by.contains_key(c) {
            order.push(c);
        }
        by.entry(c).or_default().push(r);
    }
    for c in order {
        let rs = by.remove(c).unwrap_or_default();
        for part in rs.chunks(custody_client::MAX_BATCH_CREATE) {
            create_part(client, c, part).await?;
        }
    }
    Ok(n)
}

/// Times one batch is sent before seeding gives up on it.
const ATTEMPTS: u32 = 4;

/// Whether a failed batch-create may be sent again. A 429 (rate limit) is refused before any
/// work. A lost answer (timeout, connection) or a 5xx may come from a batch that was written:
/// sending it again is safe only when every record has its id, so that a second write
/// conflicts instead of creating copies.
fn retryable(e: &ClientError, has_ids: bool) -> bool {
    match e.status().map(|s| s.as_u16()) {
        Some(429) => true,
        Some(s) => s >= 500 && has_ids,
        None => has_ids && matches!(e, ClientError::Transport(_)),
    }
}

/// Creates `part` in one batch-create, sending it again after a failure [`retryable`] allows,
/// with a growing pause. A batch-create is all or nothing (one transaction), so when a resent
/// batch meets existing ids, custody is asked whether the first and last records of the
/// batch exist: if they do, the earlier attempt landed and only its answer was lost.
async fn create_part(client: &Client, collection: &str, part: &[CreateRecord]) -> Result<(), ClipsError> {
    let has_ids = part.iter().all(|r| r.id.is_some());
    let mut attempt = 1;
    loop {
        let e = match client.batch_create(collection, part.to_vec()).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if attempt > 1 && e.status().map(|s| s.as_u16()) == Some(409) && landed(client, collection, part).await? {
            return Ok(());
        }
        if attempt >= ATTEMPTS || !retryable(&e, has_ids) {
            return Err(e.into());
        }
        tracing::warn!(collection, records = part.len(), attempt, error = %e, "batch-create failed; sending it again");
        tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        attempt += 1;
    }
}

/// Whether the first and last records of `part` exist (for a batch, whether it was written).
async fn landed(client: &Client, collection: &str, part: &[CreateRecord]) -> Result<bool, ClipsError> {
    let mut ids: Vec<&str> = Vec::with_capacity(2);
    for r in [part.first(), part.last()].into_iter().flatten() {
        let Some(id) = r.id.as_deref() else { return Ok(false) };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Ok(false);
    }
    Ok(client.batch_get(collection, &ids).await?.missing.is_empty())
}

async fn run_phase(
    client: &Client,
    plan: &SeedPlan,
    phase: Phase,
    units: u64,
    per_batch: u64,
    make: Generator,
    progress: &Progress,
) -> Result<PhaseReport, ClipsError> {
    let start = Instant::now();
    let per_batch = per_batch.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let (mut next, mut done, mut records) = (0u64, 0u64, 0u64);
    progress(phase, 0, units);
    loop {
        while next < units && tasks.len() < plan.concurrency.max(1) {
            let (lo, hi) = (next, (next + per_batch).min(units));
            next = hi;
            let (client, make) = (client.clone(), make.clone());
            tasks.spawn(async move {
                let recs: Vec<_> = (lo..hi).flat_map(|i| make(i)).collect();
                write_batch(&client, recs).await.map(|n| (hi - lo, n))
            });
        }
        let Some(res) = tasks.join_next().await else { break };
        let (u, n) = res.map_err(|e| ClipsError::BadInput(format!("seeding task failed: {e}")))??;
        done += u;
        records += n;
        progress(phase, done, units);
    }
    Ok(PhaseReport { phase, records, elapsed: start.elapsed() })
}

/// Seeds `plan` through `client` (the clips workload), calling `progress` after each batch.
///
/// # Errors
/// The first custody refusal or failure; records written before it stay.
pub async fn seed(client: &Client, plan: &SeedPlan, progress: Progress) -> Result<SeedReport, ClipsError> {
    let mut report = SeedReport::default();
    let p = Arc::new(plan.clone());
    let gen_users: Generator = {
        let p = p.clone();
        Arc::new(move |i: u64| vec![(store::USERS, records::user(&format!("u{i}"), &user(&p, i)))])
    };
    report.phases.push(run_phase(client, plan, Phase::Users, plan.users, 1000, gen_users, &progress).await?);
    if !plan.activity || plan.users == 0 {
        return Ok(report);
    }
    let videos = plan.videos();
    // Counters the videos start with: what the seeded activity adds up to.
    let mut counts = vec![(0i64, 0i64, 0i64); usize::try_from(videos).unwrap_or_default()];
    for i in 0..plan.users {
        let a = activity(plan, i);
        for v in &a.likes {
            if let Some(c) = counts.get_mut(*v as usize) {
                c.0 += 1;
            }
        }
        if let Some((v, _)) = &a.comment
            && let Some(c) = counts.get_mut(*v as usize)
        {
            c.1 += 1;
        }
        for (v, _) in &a.watches {
            if let Some(c) = counts.get_mut(*v as usize) {
                c.2 += 1;
            }
        }
    }
    let counts = Arc::new(counts);
    let gen_videos: Generator = {
        let (p, counts) = (p.clone(), counts.clone());
        Arc::new(move |j: u64| {
            let creator = format!("u{}", creator_of(&p, j));
            let bytes = video_bytes(&p, j);
            let chunks = media::split(&creator, &bytes);
            let (likes, comments, views) = counts.get(j as usize).copied().unwrap_or_default();
            let r = &mut rng(p.seed, 5, j);
            let topic = pick(r, TOPICS);
            let v = Video {
                id: format!("v{j}"),
                creator: creator.clone(),
                caption: format!("{topic} clip #{j}"),
                tags: format!("{topic} {}", pick(r, TOPICS)),
                duration_ms: r.gen_range(3_000..90_000),
                chunks: chunks.iter().map(|c| c.id.clone()).collect(),
                size_bytes: bytes.len() as i64,
                posted_at: store::now(),
                likes,
                comments,
                views,
            };
            let mut out: Vec<_> = chunks.iter().map(|c| (store::CHUNKS, records::chunk(&creator, c))).collect();
            out.push((store::VIDEOS, records::video(&v)));
            out
        })
    };
    let per_video = (plan.video_bytes / media::CHUNK_SIZE + 1) as u64;
    let per_batch = (400_000 / (plan.video_bytes as u64 * 4 / 3 + 400)).max(1).min(1000 / (per_video + 1));
    report.phases.push(run_phase(client, plan, Phase::Videos, videos, per_batch, gen_videos, &progress).await?);

    let gen_follows: Generator = {
        let p = p.clone();
        Arc::new(move |i: u64| {
            let me = format!("u{i}");
            activity(&p, i).follows.iter().map(|f| (store::FOLLOWS, records::follow(&me, &format!("u{f}")))).collect()
        })
    };
    let per = u64::from(plan.follows_per_user.max(1));
    report.phases.push(run_phase(client, plan, Phase::Follows, plan.users, 1000 / per, gen_follows, &progress).await?);

    let gen_likes: Generator = {
        let p = p.clone();
        Arc::new(move |i: u64| {
            let me = format!("u{i}");
            activity(&p, i).likes.iter().map(|v| (store::LIKES, records::like(&me, &format!("v{v}")))).collect()
        })
    };
    let per = u64::from(plan.likes_per_user.max(1));
    report.phases.push(run_phase(client, plan, Phase::Likes, plan.users, 1000 / per, gen_likes, &progress).await?);

    let gen_watches: Generator = {
        let p = p.clone();
        let at = store::now();
        Arc::new(move |i: u64| {
            let me = format!("u{i}");
            activity(&p, i)
                .watches
                .iter()
                .enumerate()
                .map(|(k, (v, ms))| {
                    let w =
                        Watch { video: format!("v{v}"), creator: format!("u{}", creator_of(&p, *v)), watched_ms: *ms };
                    (store::WATCHES, records::watch(&format!("w{i}-{k}"), &me, &w, &at))
                })
                .collect()
        })
    };
    let per = u64::from(plan.watches_per_user.max(1));
    report.phases.push(run_phase(client, plan, Phase::Watches, plan.users, 1000 / per, gen_watches, &progress).await?);

    let gen_comments: Generator = {
        let p = p.clone();
        let at = store::now();
        Arc::new(move |i: u64| {
            activity(&p, i)
                .comment
                .map(|(v, text)| {
                    let c = Comment {
                        id: format!("c{i}"),
                        video: format!("v{v}"),
                        author: format!("u{i}"),
                        text,
                        posted_at: at.clone(),
                    };
                    (store::COMMENTS, records::comment(&c))
                })
                .into_iter()
                .collect()
        })
    };
    report.phases.push(run_phase(client, plan, Phase::Comments, plan.users, 1000, gen_comments, &progress).await?);
    Ok(report)
}
