//! `store-dir`: backs up a local directory tree into an m365bk repository and restores it, with
//! the storage core's public API only. It exists so `benches/vs-restic.py` can run m365bk's
//! store and restic on the same files; m365bk itself backs up Microsoft 365, not directories.
//!
//! ```text
//! cargo build --release --example store-dir
//! M365BK_PASSPHRASE=… store-dir init REPO
//! M365BK_PASSPHRASE=… store-dir backup REPO DIR       # incremental against DIR's last snapshot
//! M365BK_PASSPHRASE=… store-dir restore REPO TARGET   # DIR's last snapshot into TARGET
//! ```
//!
//! Like the Exchange and OneDrive workers, `backup` runs several content writers at once
//! (`--jobs N`, default 4, as the workers' default concurrency), each streaming one file into
//! a [`m365bk_store::ContentWriter`] (read straight into the writer's buffer with
//! [`m365bk_store::ContentWriter::write_from`]); the store chunks, hashes, compresses and seals
//! on its compute pool. A file whose size, mtime, ctime and inode equal those recorded in the parent snapshot is not read again (its
//! [`ContentRef`] is reused), as restic does by default. `restore` reads all files' blobs pack
//! by pack with [`Repository::read_contents`] and writes each blob at its offset in every file
//! that holds it, as restic's restorer does; `restore --by-file` reads file by file with
//! [`Repository::read_content`], `--jobs` files at once, as the restore workers read items.
//! Each command prints one JSON line of statistics.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use m365bk_store::{
    ContentRef, Encryption, InitOptions, Item, KdfParams, Repository, SecretString, SnapshotDraft,
};
use serde_json::json;

const SERVICE: &str = "files";

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn passphrase() -> Res<SecretString> {
    let p = std::env::var("M365BK_PASSPHRASE")
        .map_err(|_| "set $M365BK_PASSPHRASE to the repository passphrase")?;
    Ok(SecretString::from(p))
}

fn usage() -> ! {
    eprintln!("usage: store-dir init REPO | backup REPO DIR [--jobs N] | restore REPO TARGET [--source DIR] [--by-file [--jobs N]]");
    std::process::exit(2)
}

fn main() -> Res<()> {
    // As m365bk's own main does.
    m365bk_store::limit_malloc_arenas();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut jobs = 4usize;
    let mut source: Option<String> = None;
    let mut by_file = false;
    let mut pos = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jobs" => {
                jobs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--source" => source = Some(it.next().unwrap_or_else(|| usage())),
            "--by-file" => by_file = true,
            _ => pos.push(a),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let stats = match pos.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["init", repo] => rt.block_on(init(repo))?,
        ["backup", repo, dir] => rt.block_on(backup(repo, Path::new(dir), jobs))?,
        ["restore", repo, target] => {
            let target = Path::new(target);
            if by_file {
                rt.block_on(restore_by_file(repo, target, source.as_deref(), jobs))?
            } else {
                rt.block_on(restore(repo, target, source.as_deref()))?
            }
        }
        _ => usage(),
    };
    let mut stats = stats;
    stats["seconds"] = json!(started.elapsed().as_secs_f64());
    println!("{stats}");
    Ok(())
}

async fn init(repo: &str) -> Res<serde_json::Value> {
    let r = Repository::init(
        repo,
        InitOptions {
            encryption: Encryption::Passphrase(passphrase()?),
            kdf: KdfParams::RECOMMENDED,
            cipher: Default::default(),
        },
    )
    .await?;
    Ok(json!({ "repository": r.id() }))
}

/// Files under `dir`, as (path relative to `dir` with `/` separators, absolute path), sorted.
fn walk(dir: &Path) -> Res<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn file_meta(m: &std::fs::Metadata) -> serde_json::Value {
    json!({
        "mtime_ns": m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        "ctime_ns": m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        "ino": m.ino(),
        "mode": m.mode(),
    })
}

async fn backup(repo: &str, dir: &Path, jobs: usize) -> Res<serde_json::Value> {
    let dir = std::fs::canonicalize(dir)?;
    let resource = dir.to_string_lossy().into_owned();
    let repo = Repository::open(repo, Some(passphrase()?)).await?;
    let parent = repo
        .list_snapshots()
        .await?
        .into_iter()
        .rev()
        .find(|s| s.service == SERVICE && s.resource_id == resource);
    let parent_items: std::collections::HashMap<String, Item> = match &parent {
        Some(p) => repo
            .load_items(p)
            .await?
            .into_iter()
            .map(|i| (i.path.clone(), i))
            .collect(),
        None => Default::default(),
    };
    let files = walk(&dir)?;
    let writer = Arc::new(repo.begin_backup().await?);
    let parent_items = Arc::new(parent_items);
    let mut reused = 0u64;
    let items: Vec<(Item, bool)> = futures::stream::iter(files)
        .map(|(rel, path)| {
            let writer = writer.clone();
            let parent_items = parent_items.clone();
            async move {
                let meta = std::fs::symlink_metadata(&path)?;
                let metadata = file_meta(&meta);
                let modified = meta.modified().ok().map(chrono::DateTime::from);
                if let Some(old) = parent_items.get(&rel) {
                    if let Some(content) = &old.content {
                        if old.size == meta.len()
                            && old.metadata == metadata
                            && writer.contains(content)
                        {
                            return Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                                old.clone(),
                                true,
                            ));
                        }
                    }
                }
                let content = store_file(&writer, path).await?;
                Ok((
                    Item {
                        kind: "file".into(),
                        id: rel.clone(),
                        parent_id: None,
                        path: rel,
                        change_key: None,
                        size: content.size,
                        modified,
                        metadata,
                        content: Some(content),
                    },
                    false,
                ))
            }
        })
        // Unordered: with `buffered`, a large file at the head of the queue would hold every
        // finished slot behind it and leave one writer running.
        .buffer_unordered(jobs)
        .try_collect()
        .await?;
    let mut items = items;
    items.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let items: Vec<Item> = items
        .into_iter()
        .map(|(i, r)| {
            reused += u64::from(r);
            i
        })
        .collect();
    let count = items.len();
    let snapshot = writer
        .commit_snapshot(SnapshotDraft {
            service: SERVICE.into(),
            resource_id: resource.clone(),
            resource_name: resource,
            parent: parent.map(|p| p.id),
            items,
            ..Default::default()
        })
        .await?;
    let writer = Arc::try_unwrap(writer).map_err(|_| "writer still shared")?;
    let stats = writer.finish().await?;
    Ok(json!({
        "snapshot": snapshot.id.to_string(),
        "files": count,
        "files_unchanged": reused,
        "bytes": snapshot.total_size,
        "stats": stats,
    }))
}

async fn store_file(writer: &m365bk_store::BackupWriter, path: PathBuf) -> Res<ContentRef> {
    let mut cw = writer.content_writer();
    cw.write_from(std::fs::File::open(&path)?).await??;
    Ok(cw.finish().await?)
}

/// The last snapshot of `source` (any directory when `None`), with its target directories
/// made, and its items grouped by content: files with the same content are fetched once.
async fn restore_plan(
    repo: &str,
    target: &Path,
    source: Option<&str>,
) -> Res<(Repository, String, Vec<(Option<ContentRef>, Vec<PathBuf>)>)> {
    let repo = Repository::open(repo, Some(passphrase()?)).await?;
    let snapshot = repo
        .list_snapshots()
        .await?
        .into_iter()
        .rev()
        .find(|s| s.service == SERVICE && source.is_none_or(|d| s.resource_id == d))
        .ok_or("no snapshot to restore")?;
    let items = repo.load_items(&snapshot).await?;
    let mut dirs: Vec<PathBuf> = items
        .iter()
        .filter_map(|i| target.join(&i.path).parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
    }
    let mut groups: Vec<(Option<ContentRef>, Vec<PathBuf>)> = Vec::new();
    let mut by_content: std::collections::HashMap<Vec<m365bk_store::BlobId>, usize> =
        Default::default();
    for item in items {
        let path = target.join(&item.path);
        let key = item
            .content
            .as_ref()
            .map(|c| c.blobs.clone())
            .unwrap_or_default();
        match by_content.get(&key) {
            Some(&g) => groups[g].1.push(path),
            None => {
                by_content.insert(key, groups.len());
                groups.push((item.content, vec![path]));
            }
        }
    }
    Ok((repo, snapshot.id.to_string(), groups))
}

/// Restores with [`Repository::read_contents`]: all files' blobs pack by pack, each blob
/// decoded once and written (`pwrite`) at its offset in every file that holds it, by one of
/// [`WRITERS`] tasks. A file is created when its first piece arrives and closed when its last
/// one is written.
async fn restore(repo: &str, target: &Path, source: Option<&str>) -> Res<serde_json::Value> {
    // A file stays open from its first piece to its last, and pieces come in pack order: lift
    // the soft limit on open files (often 1,024) to the hard one.
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised)?;
    }
    let (repo, snapshot, groups) = restore_plan(repo, target, source).await?;
    let mut contents = Vec::new();
    let mut open = Vec::new();
    let mut bytes = 0u64;
    for (content, paths) in groups {
        match content {
            Some(content) if !content.blobs.is_empty() => {
                bytes += content.size * paths.len() as u64;
                open.push(Some(Open {
                    paths,
                    files: Vec::new(),
                    remaining: content.size,
                }));
                contents.push(content);
            }
            _ => {
                for p in &paths {
                    std::fs::File::create(p)?;
                }
            }
        }
    }
    // Files are split between WRITERS tasks (content i to writer i % WRITERS), so the kernel's
    // share of the restore (creating and writing files) runs on more than one thread: 0.73 s
    // against 0.79 s with one writer (vs-restic corpus into a tmpfs, five runs each).
    let mut tables: Vec<Vec<(usize, Open)>> = (0..WRITERS).map(|_| Vec::new()).collect();
    for (i, o) in open.iter_mut().enumerate() {
        tables[i % WRITERS].push((i, o.take().expect("set above")));
    }
    let mut senders = Vec::new();
    let mut writers = Vec::new();
    for table in tables {
        let (tx, rx) = tokio::sync::mpsc::channel::<m365bk_store::ContentPiece>(16);
        senders.push(tx);
        writers.push(tokio::spawn(write_pieces(table, rx)));
    }
    let mut pieces = std::pin::pin!(repo.read_contents(&contents));
    while let Some(piece) = pieces.try_next().await? {
        let writer = piece.content % WRITERS;
        if senders[writer].send(piece).await.is_err() {
            break; // that writer failed: its error is reported below
        }
    }
    drop(senders);
    // Every writer's result: when one fails, the others stop short and report missing bytes,
    // so the first error that is not such a shortfall is the cause.
    let mut errors = Vec::new();
    for w in writers {
        if let Err(e) = w.await? {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        let cause = errors
            .iter()
            .position(|e| !e.to_string().contains("bytes missing"))
            .unwrap_or(0);
        return Err(errors.swap_remove(cause));
    }
    Ok(json!({ "snapshot": snapshot, "bytes": bytes }))
}

/// Tasks writing restored pieces at once (`restore`).
const WRITERS: usize = 2;

/// One restored file (and its copies) while its pieces arrive.
struct Open {
    paths: Vec<PathBuf>,
    files: Vec<std::fs::File>,
    remaining: u64,
}

/// Writes the pieces of the contents in `table` (content index, file) at their offsets: a file
/// is created with its first piece and closed after its last. Fails if a content gets more
/// bytes than its size, or fewer by the end.
async fn write_pieces(
    table: Vec<(usize, Open)>,
    mut rx: tokio::sync::mpsc::Receiver<m365bk_store::ContentPiece>,
) -> Res<()> {
    use std::os::unix::fs::FileExt;

    let mut table: std::collections::HashMap<usize, Open> = table.into_iter().collect();
    while let Some(piece) = rx.recv().await {
        let file = table
            .get_mut(&piece.content)
            .ok_or("a piece of no content")?;
        if file.files.is_empty() {
            for p in &file.paths {
                file.files.push(std::fs::File::create(p)?);
            }
        }
        for f in &file.files {
            f.write_all_at(&piece.data, piece.offset)?;
        }
        file.remaining = file
            .remaining
            .checked_sub(piece.data.len() as u64)
            .ok_or("more bytes than the content's size")?;
        if file.remaining == 0 {
            table.remove(&piece.content);
        }
    }
    if let Some(short) = table.values().next() {
        return Err(format!(
            "{}: {} bytes missing",
            short.paths[0].display(),
            short.remaining
        )
        .into());
    }
    Ok(())
}

/// Restores file by file with [`Repository::read_content`], `jobs` files at once (as the
/// Exchange and OneDrive restore workers read items); a file with duplicates is written once
/// and then copied.
async fn restore_by_file(
    repo: &str,
    target: &Path,
    source: Option<&str>,
    jobs: usize,
) -> Res<serde_json::Value> {
    let (repo, snapshot, groups) = restore_plan(repo, target, source).await?;
    let bytes: u64 = futures::stream::iter(groups)
        .map(|(content, paths)| {
            let repo = repo.clone();
            // Each file on its own task; blobs are written straight from the decoded buffer on
            // this worker thread, without tokio::fs's copy into a buffer of its own and a
            // blocking-pool hop per write, or `block_in_place`'s hand-over of the worker (a
            // write into the page cache is a memory copy; every task here does the same work).
            tokio::spawn(async move {
                let first = paths[0].clone();
                let mut file = std::fs::File::create(&first)?;
                let mut n = 0u64;
                if let Some(content) = &content {
                    let mut blobs = std::pin::pin!(repo.read_content(content));
                    while let Some(b) = blobs.try_next().await? {
                        n += b.len() as u64;
                        file.write_all(&b)?;
                    }
                }
                drop(file);
                let copies = paths.len() as u64 - 1;
                if copies > 0 {
                    tokio::task::spawn_blocking(move || {
                        for p in &paths[1..] {
                            std::fs::copy(&paths[0], p)?;
                        }
                        Ok::<(), std::io::Error>(())
                    })
                    .await??;
                }
                Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(n * (1 + copies))
            })
        })
        .buffer_unordered(jobs)
        .map(|joined| joined?)
        .try_fold(0u64, |a, n| async move { Ok(a + n) })
        .await?;
    Ok(json!({ "snapshot": snapshot, "bytes": bytes }))
}
