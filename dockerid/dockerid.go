// Package dockerid holds what every package that logs Docker's object IDs
// needs of them.
package dockerid

// Short abbreviates a Docker ID (network, endpoint, container) to the 12
// characters the docker CLI shows, so that logs can be matched with
// `docker ps` and `docker network ls`.
func Short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
