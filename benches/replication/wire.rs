//! Figure 5, `--only wire`: bytes on the wire per delta for a one-attribute change, from
//! `/status` (`replication.bytes_sent` over `deltas_sent`) of a 2-node cluster: sequential
//! sync writes (one delta per frame) and concurrent async ones (deltas share frames).

use std::time::Duration;

use tokio::runtime::Runtime;

use crate::support::{
    Headline, Spread, Table, drained, headline, node_args, sample_all, sequential_writes,
    start_cluster, targets, write_load,
};
use crate::{CLIENTS, Opts};

pub fn run(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
    let runs = opts.pick(2, 5);
    let writes = opts.pick(1000, 3000);
    println!("\n[5] bytes on the wire per delta: 2-node clusters, {runs} runs");
    let mut t = Table::new(
        "[5] bytes on the wire per one-attribute delta (attribute \"x\", value of at most 7 bytes), 2 nodes",
        &[
            "load",
            "sender bytes/delta",
            "receiver (acks) bytes/delta",
            "deltas per ack",
        ],
    );
    let mut sync_bytes = f64::NAN;
    let mut sync_ack = f64::NAN;
    for (mode, clients) in [("sync", 1usize), ("async", CLIENTS)] {
        let setting = format!("sessions.replication={mode}");
        let (_c, nodes) = start_cluster(&format!("bench-wire-{mode}"), 2, &node_args(&[&setting]));
        let all = targets(&nodes);
        let (mut sent, mut acks) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (n1, n2) = rt.block_on(async {
                let before = sample_all(&all).await;
                let failed = if clients == 1 {
                    sequential_writes(all[0].http, 0, writes).await.1
                } else {
                    write_load(&all, &all[..1], clients, Duration::from_secs(1))
                        .await
                        .failures
                };
                assert_eq!(failed, 0, "failed writes while measuring bytes per delta");
                drained(&all).await;
                // Let the access-time batch of these writes go out as well.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let after = sample_all(&all).await;
                (after[0].since(&before[0]), after[1].since(&before[1]))
            });
            let deltas = n1.deltas_sent.max(1) as f64;
            sent.push(n1.bytes_sent as f64 / deltas);
            acks.push(n2.bytes_sent as f64 / deltas);
        }
        let (s, a) = (Spread::of(&sent), Spread::of(&acks));
        let label = if clients == 1 {
            sync_bytes = s.median;
            sync_ack = a.median;
            format!("sync, 1 client, {writes} sequential writes")
        } else {
            format!("async, {clients} clients on n1 for 1 s")
        };
        // One Ack frame per Deltas frame, of about the same size: the sync run (one delta
        // per frame) gives its size.
        let per_frame = sync_ack / a.median;
        t.row(vec![
            label,
            s.show(|x| format!("{x:.1} B")),
            a.show(|x| format!("{x:.1} B")),
            format!("≈ {per_frame:.1}"),
        ]);
    }
    t.note("sender bytes: replication.bytes_sent of n1 (every frame it sent on its links, 4-byte length prefixes included: the delta frames, plus the access-time batches (one small frame per 250 ms) and any anti-entropy digest) / its deltas_sent");
    t.note("receiver bytes: replication.bytes_sent of n2 over the same deltas: its acknowledgements (one per frame) and digest answers");
    t.note("deltas per ack: deltas over Ack frames (an ack covers every frame that arrived before it was sent, so frames are at least as many; the Ack size is taken from the sync run)");
    t.note("every frame carries the cluster name (here ~25 bytes) and the sender id");
    t.print();
    headline(
        summary,
        "bytes on the wire per one-attribute delta (sync)",
        format!("{sync_bytes:.0} B"),
        "(report)",
        None,
    );
}
