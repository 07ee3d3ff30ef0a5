package cluster

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchHandler takes what listWatch reads: the full set at a revision,
// then every change after it, in order.
type watchHandler interface {
	reset(kvs []*mvccpb.KeyValue, rev int64)
	events(evs []*clientv3.Event)
}

// listWatch lists key (with opts: a prefix, a range), hands the whole set
// to h.reset, then watches from the next revision and hands h every
// event. When the watch cannot go on from where it was (its revision was
// compacted, or etcd ended it), it lists again, so h.reset sees the new
// whole set. The client resumes a watch by itself across a short
// disconnection or an etcd restart. It returns when ctx ends.
func (n *Node) listWatch(ctx context.Context, key string, opts []clientv3.OpOption, h watchHandler) {
	delay := newBackoff()
	for ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
		resp, err := n.cli.Get(lctx, key, opts...)
		cancel()
		if err != nil {
			n.noteErr(err)
			delay.sleep(ctx)
			continue
		}
		delay.reset()
		h.reset(resp.Kvs, resp.Header.Revision)
		n.watchFrom(ctx, key, resp.Header.Revision+1, opts, h)
	}
}

// watchFrom hands h the events from rev on, until the watch ends.
func (n *Node) watchFrom(ctx context.Context, key string, rev int64, opts []clientv3.OpOption, h watchHandler) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wopts := append([]clientv3.OpOption{clientv3.WithRev(rev), clientv3.WithPrevKV()}, opts...)
	for wr := range n.cli.Watch(ctx, key, wopts...) {
		if wr.CompactRevision != 0 {
			n.log.WithFields(map[string]any{"key": key, "compacted": wr.CompactRevision}).Info("watch fell behind a compaction; listing again")
			return
		}
		if err := wr.Err(); err != nil {
			n.noteErr(err)
			n.log.WithError(err).WithField("key", key).Info("watch ended; listing again")
			return
		}
		if len(wr.Events) > 0 {
			n.watchEvents.Add(uint64(len(wr.Events)))
			h.events(wr.Events)
		}
	}
}
