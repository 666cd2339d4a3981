package deploy

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"testing"
)

// Mirrors of the subset of the Kubernetes API types the manifests use, with
// the same JSON field names. Decoding with unknown fields rejected catches a
// misspelt or misplaced field, which kubectl would drop with a warning at
// best, offline and without a cluster.

type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

type k8sObject struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
}

type namespace struct {
	k8sObject
}

type configMap struct {
	k8sObject
	Data map[string]string `json:"data"`
}

// intOrString is a port number or a port name.
type intOrString struct {
	Int  int
	Name string
}

func (v *intOrString) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &v.Int); err == nil {
		return nil
	}
	return json.Unmarshal(b, &v.Name)
}

// quantity is a resource quantity such as 250m, 1Gi or 2.
type quantity string

var quantityRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$`)

func (q *quantity) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("quantity %s: %v", b, err)
		}
		s = n.String()
	}
	if !quantityRE.MatchString(s) {
		return fmt.Errorf("quantity %q is not a Kubernetes quantity", s)
	}
	*q = quantity(s)
	return nil
}

type servicePort struct {
	Name       string      `json:"name"`
	Port       int         `json:"port"`
	TargetPort intOrString `json:"targetPort"`
	Protocol   string      `json:"protocol"`
}

type service struct {
	k8sObject
	Spec struct {
		Type                  string            `json:"type"`
		ExternalTrafficPolicy string            `json:"externalTrafficPolicy"`
		Selector              map[string]string `json:"selector"`
		Ports                 []servicePort     `json:"ports"`
	} `json:"spec"`
}

type seccompProfile struct {
	Type string `json:"type"`
}

type probe struct {
	HTTPGet *struct {
		Path string      `json:"path"`
		Port intOrString `json:"port"`
	} `json:"httpGet"`
	InitialDelaySeconds int `json:"initialDelaySeconds"`
	PeriodSeconds       int `json:"periodSeconds"`
	TimeoutSeconds      int `json:"timeoutSeconds"`
	FailureThreshold    int `json:"failureThreshold"`
}

type containerPort struct {
	Name          string `json:"name"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

type container struct {
	Name            string          `json:"name"`
	Image           string          `json:"image"`
	ImagePullPolicy string          `json:"imagePullPolicy"`
	Args            []string        `json:"args"`
	Ports           []containerPort `json:"ports"`
	VolumeMounts    []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
		ReadOnly  bool   `json:"readOnly"`
	} `json:"volumeMounts"`
	SecurityContext struct {
		RunAsNonRoot             *bool           `json:"runAsNonRoot"`
		RunAsUser                *int64          `json:"runAsUser"`
		RunAsGroup               *int64          `json:"runAsGroup"`
		AllowPrivilegeEscalation *bool           `json:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool           `json:"readOnlyRootFilesystem"`
		Privileged               *bool           `json:"privileged"`
		SeccompProfile           *seccompProfile `json:"seccompProfile"`
		Capabilities             struct {
			Drop []string `json:"drop"`
			Add  []string `json:"add"`
		} `json:"capabilities"`
	} `json:"securityContext"`
	StartupProbe   *probe `json:"startupProbe"`
	LivenessProbe  *probe `json:"livenessProbe"`
	ReadinessProbe *probe `json:"readinessProbe"`
	Env            []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env"`
	Resources struct {
		Requests map[string]quantity `json:"requests"`
		Limits   map[string]quantity `json:"limits"`
	} `json:"resources"`
}

type podSpec struct {
	AutomountServiceAccountToken  *bool `json:"automountServiceAccountToken"`
	EnableServiceLinks            *bool `json:"enableServiceLinks"`
	TerminationGracePeriodSeconds int   `json:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot        *bool           `json:"runAsNonRoot"`
		RunAsUser           *int64          `json:"runAsUser"`
		RunAsGroup          *int64          `json:"runAsGroup"`
		FSGroup             *int64          `json:"fsGroup"`
		FSGroupChangePolicy string          `json:"fsGroupChangePolicy"`
		SeccompProfile      *seccompProfile `json:"seccompProfile"`
		Sysctls             []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"sysctls"`
	} `json:"securityContext"`
	Containers []container `json:"containers"`
	Volumes    []struct {
		Name      string `json:"name"`
		ConfigMap *struct {
			Name  string `json:"name"`
			Items []struct {
				Key  string `json:"key"`
				Path string `json:"path"`
			} `json:"items"`
		} `json:"configMap"`
	} `json:"volumes"`
}

type statefulSet struct {
	k8sObject
	Spec struct {
		ServiceName         string `json:"serviceName"`
		Replicas            *int   `json:"replicas"`
		PodManagementPolicy string `json:"podManagementPolicy"`
		UpdateStrategy      struct {
			Type string `json:"type"`
		} `json:"updateStrategy"`
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Template struct {
			Metadata objectMeta `json:"metadata"`
			Spec     podSpec    `json:"spec"`
		} `json:"template"`
		VolumeClaimTemplates []struct {
			Metadata objectMeta `json:"metadata"`
			Spec     struct {
				AccessModes      []string `json:"accessModes"`
				StorageClassName *string  `json:"storageClassName"`
				Resources        struct {
					Requests map[string]quantity `json:"requests"`
				} `json:"resources"`
			} `json:"spec"`
		} `json:"volumeClaimTemplates"`
	} `json:"spec"`
}

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
}

// manifests holds every object of deploy/kubernetes, decoded strictly.
type manifests struct {
	namespaces   []namespace
	configMaps   []configMap
	services     []service
	statefulSets []statefulSet
}

var kindAPIVersion = map[string]string{
	"Namespace": "v1", "ConfigMap": "v1", "Service": "v1", "StatefulSet": "apps/v1",
}

func loadManifests(t *testing.T) (manifests, kustomization) {
	t.Helper()
	var m manifests
	var kz kustomization
	if err := decodeStrict(readYAML(t, "kubernetes/kustomization.yaml")[0], &kz); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, f := range files {
		if filepath.Base(f) != "kustomization.yaml" {
			listed = append(listed, filepath.Base(f))
		}
	}
	got := slices.Clone(kz.Resources)
	sort.Strings(got)
	if !slices.Equal(got, listed) {
		t.Errorf("kustomization resources %v, files %v", got, listed)
	}
	for _, f := range listed {
		path := filepath.Join("kubernetes", f)
		for i, doc := range readYAML(t, path) {
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := decodeStrictLoose(doc, &head); err != nil {
				t.Fatalf("%s #%d: %v", path, i, err)
			}
			if want, ok := kindAPIVersion[head.Kind]; !ok || head.APIVersion != want {
				t.Fatalf("%s #%d: kind %q apiVersion %q is not one the tests know", path, i, head.Kind, head.APIVersion)
			}
			var target any
			switch head.Kind {
			case "Namespace":
				m.namespaces = append(m.namespaces, namespace{})
				target = &m.namespaces[len(m.namespaces)-1]
			case "ConfigMap":
				m.configMaps = append(m.configMaps, configMap{})
				target = &m.configMaps[len(m.configMaps)-1]
			case "Service":
				m.services = append(m.services, service{})
				target = &m.services[len(m.services)-1]
			case "StatefulSet":
				m.statefulSets = append(m.statefulSets, statefulSet{})
				target = &m.statefulSets[len(m.statefulSets)-1]
			}
			if err := decodeStrict(doc, target); err != nil {
				t.Fatalf("%s #%d (%s): %v", path, i, head.Kind, err)
			}
		}
	}
	return m, kz
}

// decodeStrictLoose decodes the fields v has and ignores the rest.
func decodeStrictLoose(value any, v any) error {
	b, err := json.Marshal(value)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func TestKubernetesManifests(t *testing.T) {
	m, kz := loadManifests(t)
	if len(m.namespaces) != 1 || len(m.configMaps) != 1 || len(m.statefulSets) != 1 || len(m.services) != 2 {
		t.Fatalf("want 1 namespace, 1 config map, 1 stateful set and 2 services; have %d, %d, %d, %d",
			len(m.namespaces), len(m.configMaps), len(m.statefulSets), len(m.services))
	}
	ns := m.namespaces[0].Metadata.Name
	if kz.Namespace != ns {
		t.Errorf("kustomization namespace %q, Namespace %q", kz.Namespace, ns)
	}
	if m.namespaces[0].Metadata.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace does not enforce the restricted Pod Security Standard")
	}
	for _, o := range []k8sObject{m.configMaps[0].k8sObject, m.statefulSets[0].k8sObject, m.services[0].k8sObject, m.services[1].k8sObject} {
		if o.Metadata.Namespace != ns {
			t.Errorf("%s %s is in namespace %q, want %q", o.Kind, o.Metadata.Name, o.Metadata.Namespace, ns)
		}
	}

	// The config is deploy/relay.json.
	cm := m.configMaps[0]
	var inCM, example any
	if err := json.Unmarshal([]byte(cm.Data["relay.json"]), &inCM); err != nil {
		t.Fatalf("config map relay.json: %v", err)
	}
	if err := json.Unmarshal(readFile(t, "relay.json"), &example); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(inCM, example) {
		t.Errorf("config map relay.json differs from deploy/relay.json")
	}
	relayCfg := loadRelayJSON(t, []byte(cm.Data["relay.json"]))
	transportPort, metricsPort := relayCfg.port(t, "https_listen"), relayCfg.port(t, "metrics_listen")
	if relayCfg.port(t, "h3_listen") != transportPort {
		t.Errorf("https and h3 listen on different ports")
	}

	ss := m.statefulSets[0]
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 1 {
		t.Errorf("replicas %v, want 1 (one relay per store)", ss.Spec.Replicas)
	}
	podLabels := ss.Spec.Template.Metadata.Labels
	if !subset(ss.Spec.Selector.MatchLabels, podLabels) || len(ss.Spec.Selector.MatchLabels) == 0 {
		t.Errorf("selector %v does not select the pod labels %v", ss.Spec.Selector.MatchLabels, podLabels)
	}
	pod := ss.Spec.Template.Spec
	psc := pod.SecurityContext
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || strconv.FormatInt(*psc.RunAsUser, 10) != imageUID {
		t.Errorf("pod must run as non-root uid %s", imageUID)
	}
	if psc.FSGroup == nil || psc.FSGroupChangePolicy != "OnRootMismatch" {
		t.Errorf("pod needs fsGroup (to write the volume) with fsGroupChangePolicy OnRootMismatch (to keep relay.secret 0600)")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("the relay needs no Kubernetes API token; set automountServiceAccountToken: false")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("container: runAsNonRoot must be true")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("container: readOnlyRootFilesystem must be true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container: allowPrivilegeEscalation must be false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("container: privileged")
	}
	if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("container: capabilities.drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	for _, a := range sc.Capabilities.Add {
		if a != "NET_BIND_SERVICE" {
			t.Errorf("container: adds capability %s", a)
		}
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != "RuntimeDefault" {
		t.Errorf("seccompProfile must be RuntimeDefault")
	}
	if transportPort < 1024 && len(sc.Capabilities.Add) == 0 {
		found := false
		for _, s := range psc.Sysctls {
			found = found || s.Name == "net.ipv4.ip_unprivileged_port_start"
		}
		if !found {
			t.Errorf("a non-root relay on port %d needs NET_BIND_SERVICE or net.ipv4.ip_unprivileged_port_start", transportPort)
		}
	}
	for _, s := range psc.Sysctls {
		if v, err := strconv.Atoi(s.Value); s.Name == "net.ipv4.ip_unprivileged_port_start" && (err != nil || v > transportPort) {
			t.Errorf("sysctl %s=%s does not let the relay bind port %d", s.Name, s.Value, transportPort)
		}
	}
	checkMemLimit(t, c)
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" || c.Resources.Limits[r] == "" {
			t.Errorf("container: %s request and limit are required", r)
		}
	}

	// Ports: https on TCP and h3 on UDP at the transport port, metrics apart.
	ports := map[string]containerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}
	for name, want := range map[string]containerPort{
		"https":   {"https", transportPort, "TCP"},
		"h3":      {"h3", transportPort, "UDP"},
		"metrics": {"metrics", metricsPort, "TCP"},
	} {
		if ports[name] != want {
			t.Errorf("container port %s = %+v, want %+v", name, ports[name], want)
		}
	}
	if transportPort != 443 {
		t.Errorf("transport port %d, want 443", transportPort)
	}
	resolve := func(p intOrString) containerPort {
		if p.Name != "" {
			return ports[p.Name]
		}
		for _, cp := range c.Ports {
			if cp.ContainerPort == p.Int {
				return cp
			}
		}
		return containerPort{}
	}

	// Probes on the metrics port: liveness /livez, the others /healthz.
	if c.LivenessProbe == nil {
		t.Errorf("container has no liveness probe")
	}
	for name, p := range map[string]*probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil {
			continue
		}
		want := "/healthz"
		if name == "liveness" {
			want = "/livez"
		}
		if p.HTTPGet == nil || p.HTTPGet.Path != want || resolve(p.HTTPGet.Port).ContainerPort != metricsPort {
			t.Errorf("%s probe must GET %s on the metrics port %d", name, want, metricsPort)
		}
	}

	// Volumes: the claim at the data directory, the config map at /etc/postern.
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	claims := map[string]bool{}
	for _, vct := range ss.Spec.VolumeClaimTemplates {
		claims[vct.Metadata.Name] = true
		if vct.Spec.Resources.Requests["storage"] == "" || !slices.Equal(vct.Spec.AccessModes, []string{"ReadWriteOnce"}) {
			t.Errorf("volume claim %s needs a storage request and ReadWriteOnce", vct.Metadata.Name)
		}
	}
	if !claims[mounts["/var/lib/postern"]] {
		t.Errorf("no volume claim template is mounted at /var/lib/postern (the --data directory)")
	}
	cfgVolume := mounts["/etc/postern"]
	ok := false
	for _, v := range pod.Volumes {
		if v.Name == cfgVolume && v.ConfigMap != nil && v.ConfigMap.Name == cm.Metadata.Name {
			for _, it := range v.ConfigMap.Items {
				ok = ok || (it.Key == "relay.json" && it.Path == "relay.json")
			}
		}
	}
	if !ok {
		t.Errorf("config map %s is not mounted as /etc/postern/relay.json", cm.Metadata.Name)
	}

	// Services: a public LoadBalancer with TCP and UDP 443 and nothing else,
	// and a ClusterIP service with the metrics port only.
	var public, metrics *service
	for i := range m.services {
		s := &m.services[i]
		if !subset(s.Spec.Selector, podLabels) || len(s.Spec.Selector) == 0 {
			t.Errorf("service %s does not select the relay pod", s.Metadata.Name)
		}
		switch s.Spec.Type {
		case "LoadBalancer":
			public = s
		case "ClusterIP", "":
			metrics = s
		}
	}
	if public == nil || metrics == nil {
		t.Fatalf("want one LoadBalancer and one ClusterIP service")
	}
	var protos []string
	for _, p := range public.Spec.Ports {
		target := resolve(p.TargetPort)
		if p.Port != 443 || target.ContainerPort != transportPort || target.Protocol != p.Protocol {
			t.Errorf("public service port %+v does not map 443 to the transport port", p)
		}
		protos = append(protos, p.Protocol)
	}
	sort.Strings(protos)
	if !slices.Equal(protos, []string{"TCP", "UDP"}) {
		t.Errorf("public service protocols %v, want TCP and UDP", protos)
	}
	if len(metrics.Spec.Ports) != 1 || resolve(metrics.Spec.Ports[0].TargetPort).ContainerPort != metricsPort {
		t.Errorf("metrics service must expose the metrics port only")
	}
	if ss.Spec.ServiceName != metrics.Metadata.Name {
		t.Errorf("serviceName %q, want the metrics service %q", ss.Spec.ServiceName, metrics.Metadata.Name)
	}
	if metrics.Metadata.Annotations["prometheus.io/port"] != strconv.Itoa(metricsPort) {
		t.Errorf("prometheus.io/port annotation is not the metrics port")
	}
}

func subset(a, b map[string]string) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
