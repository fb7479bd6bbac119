// Command coredns is the local cluster's DNS server: CoreDNS, compiled with
// only the plugins a cluster DNS needs (hack/coredns.py writes its Corefile and
// runs it). There is no forward plugin, nor any other that sends a query
// anywhere: the Corefile answers a name outside the cluster's zones with
// NXDOMAIN (template), so no DNS packet leaves this machine.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// The plugins compiled in, in CoreDNS's own execution order
// (core/dnsserver/zdirectives.go); a Corefile naming any other is refused.
var directives = []string{
	"bind",
	"ready",
	"errors",
	"log",
	"cache",
	"template",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
