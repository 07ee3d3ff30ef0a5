package plugin

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/identity"
)

// identityCollector frees the node's label identities once they have had
// no reference for the grace: until then a container run again with the
// same labels takes its number back without a write or a regeneration of
// every endpoint's policy (identity.FileAllocator). In a cluster the file
// holds no label set the endpoints use (the cluster's store numbers them,
// and frees them after the same grace), only those an earlier single node
// left, which go the same way.
type identityCollector struct {
	alloc *identity.FileAllocator
	grace time.Duration
	log   logrus.FieldLogger
}

// collectInterval is how often the collector looks: a quarter of the
// grace, as the cluster's collector does, so an identity goes at most a
// quarter of the grace late, within 100 ms..1 min.
func (c identityCollector) collectInterval() time.Duration {
	return min(max(c.grace/4, 100*time.Millisecond), time.Minute)
}

// run collects every interval until ctx ends.
func (c identityCollector) run(ctx context.Context) {
	t := time.NewTicker(c.collectInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.collect(now)
		}
	}
}

// collect frees what has been unreferenced for the grace at now.
func (c identityCollector) collect(now time.Time) {
	freed, err := c.alloc.CollectUnreferencedSince(now.Add(-c.grace))
	if err != nil {
		// Kept and tried again at the next tick: nothing is lost.
		c.log.WithError(err).Warn("free identities unreferenced for the grace")
		return
	}
	if len(freed) > 0 {
		c.log.WithFields(logrus.Fields{"identities": freed, "grace": c.grace}).Debug("freed identities unreferenced for the grace")
	}
}
