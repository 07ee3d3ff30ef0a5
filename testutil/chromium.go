package testutil

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Browser is a headless Chromium (Debian's chromium) driven over the
// DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
// ending in a NUL byte on descriptors 3 and 4), which needs neither a
// WebSocket nor a library.
type Browser struct {
	t        testing.TB
	cmd      *exec.Cmd
	toChrome *os.File
	session  string

	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpAnswer
	done    chan struct{}
	stderr  *os.File
}

type cdpAnswer struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// ChromiumFlags are the flags the browser runs with: headless, no
// sandbox (tests run as root), and nothing that reaches the network on
// its own (updates, sync, safe browsing lists).
var ChromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
	"--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
	"--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
}

// StartChromium starts a browser with a fresh profile and one page of
// width x height CSS pixels; it is closed when the test ends. A missing
// chromium stops the test (testutil.Missing: a failure in CI).
func StartChromium(t testing.TB, width, height int) *Browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		Missing(t, "chromium not found (Debian's chromium package; scripts/setup installs it)")
	}
	toChrome, chromeIn, err := os.Pipe() // fd 3: what Chromium reads
	if err != nil {
		t.Fatal(err)
	}
	chromeOut, fromChrome, err := os.Pipe() // fd 4: what it writes
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.CreateTemp(t.TempDir(), "chromium-*.log")
	if err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, ChromiumFlags...), "--user-data-dir="+t.TempDir(), "about:blank")
	cmd := exec.Command(path, args...)
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// Its own process group: its helpers (zygote, renderers) go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	toChrome.Close()
	fromChrome.Close()
	b := &Browser{t: t, cmd: cmd, toChrome: chromeIn, pending: map[int]chan cdpAnswer{}, done: make(chan struct{}), stderr: stderr}
	go b.read(chromeOut)
	t.Cleanup(b.close)

	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatalf("chromium: create a page: %v\n%s", err, b.log())
	}
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached); err != nil {
		t.Fatalf("chromium: attach to the page: %v", err)
	}
	b.session = attached.SessionID
	if err := b.call(b.session, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}, nil); err != nil {
		t.Fatalf("chromium: set the page size: %v", err)
	}
	return b
}

// read dispatches the browser's answers; events are not needed here.
func (b *Browser) read(f *os.File) {
	defer close(b.done)
	defer f.Close()
	rd := bufio.NewReader(f)
	for {
		msg, err := rd.ReadBytes(0)
		if err != nil {
			return
		}
		var m struct {
			ID int `json:"id"`
			cdpAnswer
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil || m.ID == 0 {
			continue
		}
		b.mu.Lock()
		ch := b.pending[m.ID]
		delete(b.pending, m.ID)
		b.mu.Unlock()
		if ch != nil {
			ch <- m.cdpAnswer
		}
	}
}

// call sends one command and decodes its result into out (when not nil).
func (b *Browser) call(session, method string, params any, out any) error {
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpAnswer, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if _, err := b.toChrome.Write(append(data, 0)); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case a := <-ch:
		if a.Error != nil {
			return fmt.Errorf("%s: %s (%d)", method, a.Error.Message, a.Error.Code)
		}
		if out != nil {
			return json.Unmarshal(a.Result, out)
		}
		return nil
	case <-b.done:
		return fmt.Errorf("%s: chromium exited", method)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: no answer within 30s", method)
	}
}

// Navigate loads url in the page.
func (b *Browser) Navigate(url string) error {
	var r struct {
		ErrorText string `json:"errorText"`
	}
	if err := b.call(b.session, "Page.navigate", map[string]any{"url": url}, &r); err != nil {
		return err
	}
	if r.ErrorText != "" {
		return fmt.Errorf("navigate to %s: %s", url, r.ErrorText)
	}
	return nil
}

// Eval evaluates a JavaScript expression in the page (a promise is
// awaited) and decodes its JSON value into out.
func (b *Browser) Eval(expr string, out any) error {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := b.call(b.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r); err != nil {
		return err
	}
	if r.ExceptionDetails != nil {
		return fmt.Errorf("%s: %s", r.ExceptionDetails.Text, r.ExceptionDetails.Exception.Description)
	}
	if out == nil || len(r.Result.Value) == 0 {
		return nil
	}
	return json.Unmarshal(r.Result.Value, out)
}

// WaitFor evaluates expr until it is true or timeout passes.
func (b *Browser) WaitFor(expr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var lastErr error
	for {
		var ok bool
		if lastErr = b.Eval(expr, &ok); lastErr == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%s never held: %w", expr, lastErr)
			}
			return fmt.Errorf("%s never held within %v", expr, timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Screenshot saves the whole page (beyond the window too) as a PNG.
func (b *Browser) Screenshot(path string) error {
	var r struct {
		Data string `json:"data"`
	}
	if err := b.call(b.session, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &r); err != nil {
		return err
	}
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		return fmt.Errorf("decode the screenshot: %w", err)
	}
	return os.WriteFile(path, png, 0o644)
}

// log is what the browser printed, for failures.
func (b *Browser) log() string {
	data, _ := os.ReadFile(b.stderr.Name())
	return string(data)
}

// close asks the browser to quit, and kills its process group when it
// does not within 10 s.
func (b *Browser) close() {
	_ = b.call("", "Browser.close", map[string]any{}, nil)
	exited := make(chan error, 1)
	go func() { exited <- b.cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		b.t.Errorf("chromium did not quit within 10s of Browser.close: killing it")
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	// Helpers that outlived the browser itself.
	if err := syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		b.t.Logf("kill chromium's process group: %v", err)
	}
	b.toChrome.Close()
	b.stderr.Close()
}
