// coredns builds CoreDNS with only the plugins the local cluster's DNS needs: the
// cluster.local zone served from the API (kubernetes), cache, errors, log, health and
// readiness. Pods then resolve Services by name as they do in any cluster.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	"github.com/coredns/coredns/coremain"
)

// The order in which a request passes the plugins (a subset of CoreDNS's plugin.cfg).
var directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
