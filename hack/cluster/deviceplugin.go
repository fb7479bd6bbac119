package main

// A device plugin for the real node: it registers `nvidia.com/gpu` with N fake
// devices and answers Allocate the way NVIDIA's k8s-device-plugin does in its
// default "envvar" strategy (NVIDIA_VISIBLE_DEVICES lists the allocated UUIDs),
// so the kubelet's own device manager does the accounting: a pod that asks for
// more GPUs than remain stays Pending, and a deleted pod frees its devices.
//
//	gpu-device-plugin --count=4 --node=real-0
//
// The kubelet's registration socket is fixed at
// /var/lib/kubelet/device-plugins/kubelet.sock (pluginapi.KubeletSocket). The
// kubelet removes every socket in that directory when it starts, so the plugin
// watches its own socket and the kubelet's and registers again whenever either
// is replaced, as NVIDIA's plugin does.

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

const gpuResource = "nvidia.com/gpu"

type gpuPlugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
}

// fakeUUIDs are stable per node, shaped like nvidia-smi's "GPU-<uuid>".
func fakeUUIDs(node string, count int) []string {
	ids := make([]string, count)
	for i := range ids {
		h := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", node, i)))
		ids[i] = fmt.Sprintf("GPU-%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
	}
	return ids
}

func (p *gpuPlugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *gpuPlugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	// Fake devices never change health; hold the stream open until the kubelet goes.
	<-stream.Context().Done()
	return nil
}

func (p *gpuPlugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	known := map[string]bool{}
	for _, d := range p.devices {
		known[d.ID] = true
	}
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		for _, id := range c.DevicesIds {
			if !known[id] {
				return nil, fmt.Errorf("unknown device %q", id)
			}
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

func (p *gpuPlugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// serve listens on socket and registers with the kubelet; it returns the
// server so the caller can stop it when a socket is replaced.
func serve(plugin *gpuPlugin, socket string) (*grpc.Server, error) {
	_ = os.Remove(socket)
	listener, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	server := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(server, plugin)
	go func() { _ = server.Serve(listener) }()

	conn, err := grpc.NewClient("unix://"+pluginapi.KubeletSocket,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		server.Stop()
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     filepath.Base(socket),
		ResourceName: gpuResource,
	})
	if err != nil {
		server.Stop()
		return nil, fmt.Errorf("register with the kubelet: %w", err)
	}
	return server, nil
}

func inode(path string) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

func runGPUDevicePlugin() {
	fs := flag.NewFlagSet("gpu-device-plugin", flag.ExitOnError)
	count := fs.Int("count", 4, "number of fake GPUs to advertise")
	node := fs.String("node", "", "node name (seeds the device UUIDs)")
	_ = fs.String("owner", "", "state directory of the cluster that started the plugin (names it in ps)")
	_ = fs.Parse(os.Args[1:])
	if *count < 1 || *node == "" {
		fmt.Fprintln(os.Stderr, "gpu-device-plugin: --count >= 1 and --node are required")
		os.Exit(2)
	}
	plugin := &gpuPlugin{}
	for _, id := range fakeUUIDs(*node, *count) {
		plugin.devices = append(plugin.devices, &pluginapi.Device{ID: id, Health: pluginapi.Healthy})
	}
	socket := filepath.Join(pluginapi.DevicePluginPath, "turnpike-gpu.sock")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	var server *grpc.Server
	var ownInode, kubeletInode uint64
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		if k := inode(pluginapi.KubeletSocket); k != 0 && (server == nil || k != kubeletInode || inode(socket) != ownInode) {
			if server != nil {
				server.Stop()
				server = nil
			}
			s, err := serve(plugin, socket)
			if err != nil {
				fmt.Fprintf(os.Stderr, "gpu-device-plugin: %v (retrying)\n", err)
			} else {
				server, ownInode, kubeletInode = s, inode(socket), k
				fmt.Fprintf(os.Stderr, "gpu-device-plugin: registered %d x %s with the kubelet\n", *count, gpuResource)
			}
		}
		select {
		case <-stop:
			if server != nil {
				server.Stop()
			}
			_ = os.Remove(socket)
			return
		case <-tick.C:
		}
	}
}
