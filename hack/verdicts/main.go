// Command verdicts says what GitOps tools make of SomaStack objects: kstatus
// (sigs.k8s.io/cli-utils, the library Flux and kpt read health with) and
// Argo CD's health scripts (gitops/argocd, run by gopher-lua, the Lua
// interpreter Argo CD embeds, with the libraries Argo CD opens). The tests
// (tests/tests/gitops.rs) put objects in each state on the local cluster
// and assert what this prints.
//
//	verdicts read [--kubeconfig F] --lua DIR RESOURCE NAMESPACE NAME
//	    one object from the cluster (NAMESPACE "" when cluster-scoped):
//	    {"kstatus":{"status","message"},"argocd":{"status","message"}}
//	verdicts test DIR      runs every health_test.yaml under DIR, Argo CD's format
//	verdicts sync DIR      writes DIR/resource_customizations/somastack.io/<Kind>/health.lua
//	                       and DIR/argocd-cm.yaml from DIR/health.lua
//	verdicts check DIR     exits 1 when those files differ from what sync writes
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	lua "github.com/yuin/gopher-lua"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// The kinds of group somastack.io, each with its health script.
var kinds = []string{"Capsule", "DrDrill", "Installation", "KamachiqProject", "PolicyBundle"}

const group = "somastack.io"

// Verdict is a tool's reading of one object.
type Verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: verdicts read|test|sync|check ..."))
	}
	var err error
	switch os.Args[1] {
	case "read":
		err = read(os.Args[2:])
	case "test":
		err = runTests(arg(2))
	case "sync":
		err = sync(arg(2), true)
	case "check":
		err = sync(arg(2), false)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func arg(i int) string {
	if len(os.Args) <= i {
		fail(fmt.Errorf("%s needs a directory", os.Args[1]))
	}
	return os.Args[i]
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "verdicts:", err)
	os.Exit(1)
}

func read(args []string) error {
	fs := flag.NewFlagSet("read", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file")
	dir := fs.String("lua", "gitops/argocd", "folder of health.lua and resource_customizations")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 3 {
		return errors.New("read needs RESOURCE NAMESPACE NAME")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	gvr := schema.GroupVersionResource{Group: group, Version: "v1alpha1", Resource: fs.Arg(0)}
	var ri dynamic.ResourceInterface = client.Resource(gvr)
	if ns := fs.Arg(1); ns != "" {
		ri = client.Resource(gvr).Namespace(ns)
	}
	obj, err := ri.Get(context.Background(), fs.Arg(2), metav1.GetOptions{})
	if err != nil {
		return err
	}
	k, err := kstatus(obj)
	if err != nil {
		return err
	}
	a, err := argocd(*dir, obj)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"kstatus": k, "argocd": a, "object": obj.Object})
}

// kstatus is cli-utils' verdict, as Flux's health checks compute it.
func kstatus(obj *unstructured.Unstructured) (Verdict, error) {
	res, err := status.Compute(obj)
	if err != nil {
		return Verdict{}, err
	}
	return Verdict{Status: res.Status.String(), Message: res.Message}, nil
}

// scriptPath is where Argo CD's layout keeps a kind's health script.
func scriptPath(dir, kind string) string {
	return filepath.Join(dir, "resource_customizations", group, kind, "health.lua")
}

// argocd runs the kind's health.lua on the object the way Argo CD does:
// `obj` is the object as a Lua table, the script returns {status, message}.
func argocd(dir string, obj *unstructured.Unstructured) (Verdict, error) {
	script, err := os.ReadFile(scriptPath(dir, obj.GetKind()))
	if err != nil {
		return Verdict{}, err
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	// The libraries Argo CD opens for resource scripts (util/lua: base,
	// table, string, math; os is theirs, reduced, and unused here).
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		l.Push(l.NewFunction(lib.open))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	l.SetGlobal("obj", toLua(l, obj.Object))
	if err := l.DoString(string(script)); err != nil {
		return Verdict{}, fmt.Errorf("%s: %w", obj.GetKind(), err)
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return Verdict{}, fmt.Errorf("%s: the script returned %s, not a table", obj.GetKind(), l.Get(-1).Type())
	}
	v := Verdict{Status: lua.LVAsString(table.RawGetString("status")), Message: lua.LVAsString(table.RawGetString("message"))}
	switch v.Status {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
		return v, nil
	}
	return v, fmt.Errorf("%s: %q is not an Argo CD health status", obj.GetKind(), v.Status)
}

// toLua converts decoded JSON into Lua values as Argo CD does: objects and
// arrays become tables (arrays indexed from 1), numbers LNumber.
func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch v := v.(type) {
	case map[string]interface{}:
		t := l.NewTable()
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case json.Number:
		f, _ := v.Float64()
		return lua.LNumber(f)
	case nil:
		return lua.LNil
	}
	return lua.LString(fmt.Sprint(v))
}

// healthTests is Argo CD's health_test.yaml.
type healthTests struct {
	Tests []struct {
		HealthStatus Verdict `json:"healthStatus"`
		InputPath    string  `json:"inputPath"`
	} `json:"tests"`
}

func runTests(dir string) error {
	failed := 0
	for _, kind := range kinds {
		kdir := filepath.Dir(scriptPath(dir, kind))
		raw, err := os.ReadFile(filepath.Join(kdir, "health_test.yaml"))
		if err != nil {
			return err
		}
		var tests healthTests
		if err := yaml.UnmarshalStrict(raw, &tests); err != nil {
			return fmt.Errorf("%s/health_test.yaml: %w", kdir, err)
		}
		if len(tests.Tests) == 0 {
			return fmt.Errorf("%s/health_test.yaml has no tests", kdir)
		}
		for _, t := range tests.Tests {
			input, err := os.ReadFile(filepath.Join(kdir, t.InputPath))
			if err != nil {
				return err
			}
			obj := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(input, &obj.Object); err != nil {
				return fmt.Errorf("%s: %w", t.InputPath, err)
			}
			got, err := argocd(dir, obj)
			if err != nil {
				return err
			}
			mark := "ok"
			if got != t.HealthStatus {
				mark, failed = "FAIL", failed+1
			}
			fmt.Printf("%s %s/%s: %s %q (want %s %q)\n", mark, kind, t.InputPath, got.Status, got.Message, t.HealthStatus.Status, t.HealthStatus.Message)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d health test(s) failed", failed)
	}
	return nil
}

// sync writes (or, with write false, checks) every kind's copy of
// health.lua (Argo CD's layout has one script per kind; ours are one) and
// the argocd-cm snippet that carries them.
func sync(dir string, write bool) error {
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	if err != nil {
		return err
	}
	want := map[string][]byte{}
	var cm bytes.Buffer
	cm.WriteString("# Generated by `verdicts sync gitops/argocd` from gitops/argocd/health.lua; do not edit.\n")
	cm.WriteString("# Merge into Argo CD's argocd-cm ConfigMap (docs/gitops.md).\n")
	cm.WriteString("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  namespace: argocd\n  labels:\n    app.kubernetes.io/part-of: argocd\ndata:\n")
	sorted := append([]string(nil), kinds...)
	sort.Strings(sorted)
	for _, kind := range sorted {
		want[scriptPath(dir, kind)] = script
		fmt.Fprintf(&cm, "  resource.customizations.health.%s_%s: |\n", group, kind)
		for _, line := range strings.Split(strings.TrimRight(string(script), "\n"), "\n") {
			if line == "" {
				cm.WriteString("\n")
			} else {
				cm.WriteString("    " + line + "\n")
			}
		}
	}
	want[filepath.Join(dir, "argocd-cm.yaml")] = cm.Bytes()
	var stale []string
	for path, content := range want {
		have, err := os.ReadFile(path)
		if err == nil && bytes.Equal(have, content) {
			continue
		}
		if !write {
			stale = append(stale, path)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, content, 0o644); err != nil {
			return err
		}
	}
	if len(stale) > 0 {
		sort.Strings(stale)
		return fmt.Errorf("out of date (run: verdicts sync %s): %s", dir, strings.Join(stale, ", "))
	}
	return nil
}
