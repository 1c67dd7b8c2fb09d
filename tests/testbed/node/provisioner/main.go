// Command provisioner is the testbed's dynamic volume provisioner: a stand-in
// for minikube's storage-provisioner. Every claim of a StorageClass whose
// provisioner is "converge.test/hostpath" gets its own directory under
// -root, world-writable (mode 0777, as minikube's), and a hostPath
// PersistentVolume pre-bound to the claim. When a claim is deleted and its
// volume is Released with reclaim policy Delete, the directory and the
// volume are deleted.
//
// The directory must be writable by any user because hostPath volumes get
// no fsGroup ownership change: a non-root Pod (the chart's PostgreSQL runs as
// uid 10001) must be able to create its data directory in it. That is also
// why kube-controller-manager's own hostpath provisioner does not do: it
// creates /tmp/hostpath_pv/<uuid> with mode 0750, owned by root.
//
// The volumes carry no node affinity: the kwok node's Pods use them too
// (never touching the directory), and on the real node they are plain host
// directories.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// provisionerName is the StorageClass provisioner this program serves.
const provisionerName = "converge.test/hostpath"

// provisionedBy is the annotation the PV controller and this program read to
// know which provisioner owns a volume.
const provisionedBy = "pv.kubernetes.io/provisioned-by"

type provisioner struct {
	client   kubernetes.Interface
	root     string
	claims   cache.Indexer
	volumes  cache.Indexer
	classes  cache.Indexer
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of a user allowed to manage claims and volumes")
	root := flag.String("root", "", "absolute directory under which each claim gets its own directory")
	flag.Parse()
	if *kubeconfig == "" || !filepath.IsAbs(*root) {
		log.Fatal("usage: provisioner -kubeconfig FILE -root /ABSOLUTE/DIR")
	}
	if err := os.MkdirAll(*root, 0o755); err != nil {
		log.Fatalf("creating the volume root: %v", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("reading %s: %v", *kubeconfig, err)
	}
	cfg.UserAgent = "converge-testbed-provisioner"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatalf("client: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()

	// A resync re-queues everything now and then, so a failed step (a
	// directory that could not be made) is retried even without an event.
	factory := informers.NewSharedInformerFactory(client, 30*time.Second)
	claimInformer := factory.Core().V1().PersistentVolumeClaims().Informer()
	volumeInformer := factory.Core().V1().PersistentVolumes().Informer()
	classInformer := factory.Storage().V1().StorageClasses().Informer()
	p := &provisioner{
		client:   client,
		root:     filepath.Clean(*root),
		claims:   claimInformer.GetIndexer(),
		volumes:  volumeInformer.GetIndexer(),
		classes:  classInformer.GetIndexer(),
		queue:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "converge-testbed-provisioner"}),
	}
	enqueue := func(prefix string) cache.ResourceEventHandlerFuncs {
		add := func(obj any) {
			if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
				p.queue.Add(prefix + key)
			}
		}
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    add,
			UpdateFunc: func(_, obj any) { add(obj) },
		}
	}
	if _, err := claimInformer.AddEventHandler(enqueue("claim/")); err != nil {
		log.Fatal(err)
	}
	if _, err := volumeInformer.AddEventHandler(enqueue("volume/")); err != nil {
		log.Fatal(err)
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			log.Fatalf("cache of %v never synced", typ)
		}
	}
	log.Printf("serving StorageClasses of provisioner %s; volumes under %s", provisionerName, p.root)

	go func() {
		<-ctx.Done()
		p.queue.ShutDown()
	}()
	for p.next(ctx) {
	}
	factory.Shutdown()
}

// next handles one queued key; false once the queue is shut down.
func (p *provisioner) next(ctx context.Context) bool {
	key, quit := p.queue.Get()
	if quit {
		return false
	}
	defer p.queue.Done(key)
	var err error
	switch {
	case strings.HasPrefix(key, "claim/"):
		err = p.syncClaim(ctx, strings.TrimPrefix(key, "claim/"))
	case strings.HasPrefix(key, "volume/"):
		err = p.syncVolume(ctx, strings.TrimPrefix(key, "volume/"))
	}
	if err != nil {
		log.Printf("%s: %v (will retry)", key, err)
		p.queue.AddRateLimited(key)
		return true
	}
	p.queue.Forget(key)
	return true
}

// syncClaim provisions a volume for an unbound claim of one of our classes.
func (p *provisioner) syncClaim(ctx context.Context, key string) error {
	obj, exists, err := p.claims.GetByKey(key)
	if err != nil || !exists {
		return err
	}
	claim := obj.(*corev1.PersistentVolumeClaim)
	if claim.DeletionTimestamp != nil || claim.Spec.VolumeName != "" || claim.Spec.StorageClassName == nil {
		return nil
	}
	classObj, exists, err := p.classes.GetByKey(*claim.Spec.StorageClassName)
	if err != nil || !exists {
		return err
	}
	class := classObj.(*storagev1.StorageClass)
	if class.Provisioner != provisionerName {
		return nil
	}
	if class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer &&
		claim.Annotations["volume.kubernetes.io/selected-node"] == "" {
		return nil
	}
	name := "pvc-" + string(claim.UID)
	if _, exists, err := p.volumes.GetByKey(name); err != nil || exists {
		return err
	}
	size, ok := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		size = resource.MustParse("1Gi")
	}
	dir := filepath.Join(p.root, name)
	if err := makeWritableDir(dir); err != nil {
		p.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed", "creating %s: %v", dir, err)
		return err
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if class.ReclaimPolicy != nil {
		reclaim = *class.ReclaimPolicy
	}
	hostPathType := corev1.HostPathDirectoryOrCreate
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{provisionedBy: provisionerName},
		},
		Spec: corev1.PersistentVolumeSpec{
			AccessModes:                   claim.Spec.AccessModes,
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              class.Name,
			MountOptions:                  class.MountOptions,
			VolumeMode:                    claim.Spec.VolumeMode,
			ClaimRef: &corev1.ObjectReference{
				APIVersion: "v1",
				Kind:       "PersistentVolumeClaim",
				Namespace:  claim.Namespace,
				Name:       claim.Name,
				UID:        claim.UID,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType},
			},
		},
	}
	if _, err := p.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		p.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed", "creating volume %s: %v", name, err)
		return err
	}
	// The PV controller completes the binding when it next syncs the claim;
	// naming the volume in the claim now binds it at once, as a provisioned
	// claim would be after the controller's own sync.
	patch := fmt.Sprintf(`{"spec":{"volumeName":%q}}`, name)
	if _, err := p.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Patch(ctx, claim.Name,
		types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
		log.Printf("claim %s: naming volume %s: %v (the PV controller binds it on its next sync)", key, name, err)
	}
	p.recorder.Eventf(claim, corev1.EventTypeNormal, "ProvisioningSucceeded", "provisioned volume %s at %s", name, dir)
	log.Printf("claim %s: provisioned %s at %s", key, name, dir)
	return nil
}

// makeWritableDir creates dir with mode 0777 whatever the umask.
func makeWritableDir(dir string) error {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	return os.Chmod(dir, 0o777)
}

// syncVolume deletes a released volume of ours whose reclaim policy is Delete,
// directory first.
func (p *provisioner) syncVolume(ctx context.Context, name string) error {
	obj, exists, err := p.volumes.GetByKey(name)
	if err != nil || !exists {
		return err
	}
	pv := obj.(*corev1.PersistentVolume)
	if pv.Annotations[provisionedBy] != provisionerName || pv.DeletionTimestamp != nil ||
		pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete ||
		(pv.Status.Phase != corev1.VolumeReleased && pv.Status.Phase != corev1.VolumeFailed) {
		return nil
	}
	if pv.Spec.HostPath != nil {
		dir := filepath.Clean(pv.Spec.HostPath.Path)
		// Never delete anything but a directory this program made.
		if filepath.Dir(dir) != p.root || !strings.HasPrefix(filepath.Base(dir), "pvc-") {
			return fmt.Errorf("refusing to delete %s: not a directory under %s", dir, p.root)
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	uid := pv.UID
	err = p.client.CoreV1().PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	log.Printf("volume %s: released; deleted it and its directory", name)
	return nil
}
